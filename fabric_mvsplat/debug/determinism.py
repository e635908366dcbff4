"""trainer.deterministic=true: torch's deterministic algorithms, so that two runs of the same command on the same
machine produce identical checkpoints.

Seeds are set by the entry point in every run (Fabric's seed_everything, seed + rank); this adds what makes the
kernels themselves repeatable. It cannot cover custom CUDA kernels torch does not know about (gsplat's
rasterizer accumulates gradients with atomic adds), another number of ranks, DataLoader workers or threads,
another GPU model, driver or torch version.
"""

import os

import torch

# cuBLAS needs a fixed workspace for repeatable results (CUDA >= 10.2); read when the CUDA context is created.
CUBLAS_WORKSPACE = ":4096:8"


def make_deterministic(enabled: bool) -> None:
    """Call before anything touches CUDA (the cuBLAS setting is read when the CUDA context is created)."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    # An operation without a deterministic implementation raises, naming itself, instead of running silently.
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False  # autotuning may pick other kernels in each run
    torch.backends.cudnn.deterministic = True
