"""Loaded by every pytest run in this checkout (tests/ and benchmarks/ alike).

pytest-xdist (addopts in pyproject.toml) runs the suite on several worker processes. Each worker gets an equal share
of the cores as torch threads: torch's default of one thread per core in every worker oversubscribes the machine,
and two 2-thread torch processes on 2 cores run many times slower than one.
"""

import os

# ATEN_CPU_CAPABILITY=avx2 makes a newer CPU run ATen's AVX2 kernels, but the convolutions (oneDNN) pick their
# instructions by the CPU on their own, and their rounding is what decides the golden file (fabric_mvsplat/parity.py).
# Cap oneDNN too, before any convolution runs, so that the switch stands for an AVX2-only CPU as a whole.
if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

if "PYTEST_XDIST_WORKER" in os.environ:
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_sessionstart(session) -> None:
    """Build the compiled CPU rasterizer once, before any worker or subprocess renders: otherwise the first
    test to render pays the build (about a minute) and its subprocess's stderr carries the build's line.
    Without a compiler this prints the fallback line and the suite runs on the PyTorch rasterizer."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        from fabric_mvsplat.model.decoder.rasterize_cpu import load_cpu_kernels

        load_cpu_kernels()
