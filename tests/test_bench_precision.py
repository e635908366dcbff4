"""Benchmark cases on CUDA time what training runs: TF32 matmuls, as train.py sets them."""

import pytest
import torch
from conftest import load_by_path


def load_bench_conftest():
    return load_by_path("benchmarks/conftest.py", "bench_conftest")


@pytest.mark.parametrize("before", ["highest", "medium"])
def test_cuda_cases_use_tf32_matmuls_and_restore_the_setting(before):
    """Whatever the process had set before (torch's default "highest", or what an earlier test left), the CUDA
    cases time with "high" and give the setting back; CPU cases leave it alone."""
    conftest = load_bench_conftest()
    found = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(before)
    try:
        with conftest.training_matmul_precision("cuda"):
            assert torch.get_float32_matmul_precision() == "high"
        assert torch.get_float32_matmul_precision() == before
        with conftest.training_matmul_precision("cpu"):
            assert torch.get_float32_matmul_precision() == before
    finally:
        torch.set_float32_matmul_precision(found)
