"""A real 2-process torchrun (gloo, CPU) run of the loop: identical parameters, only rank 0 writes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent


def test_torchrun_two_ranks(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(TESTS / "loop_fixtures.py"), str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = {int(m.group(1)): m.group(0) for m in re.finditer(r"RESULT rank=(\d) .*", result.stdout)}
    assert sorted(lines) == [0, 1], result.stdout[-3000:]
    fields = {rank: dict(re.findall(r"(\w+)=(\S+)", line)) for rank, line in lines.items()}
    for rank in (0, 1):
        assert fields[rank]["world"] == "2" and fields[rank]["strategy"] == "DDPStrategy"
        assert fields[rank]["step"] == "6" and fields[rank]["equal"] == "True"
    assert fields[0]["sha"] == fields[1]["sha"]  # parameters stay identical across ranks
    assert fields[0]["validations"] == "4" and fields[1]["validations"] == "0"  # sanity + steps 2, 4, 6 on rank 0
    assert fields[1]["writes"] == "0", lines[1]  # rank 1 created no file and no directory
    scenes = [set(fields[rank]["scenes"].split(",")) for rank in (0, 1)]
    assert len(scenes[0]) == len(scenes[1]) == 12 and not scenes[0] & scenes[1]  # different scenes per rank

    run = tmp_path / "run"
    assert len(list((run / "tensorboard").glob("events.out.tfevents*"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0-step_6.ckpt"]
    checkpoint = torch.load(run / "checkpoints" / "epoch_0-step_6.ckpt", weights_only=True)
    assert checkpoint["train_stream"] == [{"position": 6}, {"position": 6}]
    assert len(checkpoint["rng_states"]) == 2
    assert not torch.equal(checkpoint["rng_states"][0]["torch"], checkpoint["rng_states"][1]["torch"])  # seed + rank
