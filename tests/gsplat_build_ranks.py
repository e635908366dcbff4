"""Run by tests/test_gsplat_build.py under `torchrun --nproc_per_node=2` (gloo, CPU): prepare_gsplat's
ordering across local ranks, then its failure path on a machine without build tools.

argv: results folder. Each rank writes rank<N>.json before the (expected) exit code 2."""

import json
import sys
import time
from pathlib import Path

from lightning_fabric import Fabric

from fabric_mvsplat.model.decoder import gsplat_build

results = Path(sys.argv[1])
fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()
gsplat_build.resolve_backend = lambda backend, device: "gsplat"  # as on a GPU machine
record = {"rank": fabric.local_rank}

# 1. Ordering: a loader that takes a second on rank 0 (the build) and records when each rank ran it.
real_loader = gsplat_build.load_gsplat_kernels


def timed_loader(build: bool = True) -> float:
    record["build"] = build
    record["start"] = time.time()
    time.sleep(1.0 if fabric.local_rank == 0 else 0.0)
    record["end"] = time.time()
    return record["end"] - record["start"]


gsplat_build.load_gsplat_kernels = timed_loader
gsplat_build.prepare_gsplat(fabric, "auto")

# 2. The real loader on a machine without nvcc or a compiler: every rank must stop, none may hang.
gsplat_build.load_gsplat_kernels = real_loader
gsplat_build.NVCC_DEFAULT_PATHS = ()
(results / f"rank{fabric.local_rank}.json").write_text(json.dumps(record))
gsplat_build.prepare_gsplat(fabric, "auto")
(results / f"rank{fabric.local_rank}.unexpected").write_text("prepare_gsplat returned without the build tools")
