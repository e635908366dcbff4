"""Benchmark cases on CUDA time what training runs: TF32 matmuls, as train.py sets them."""

import torch
from conftest import load_by_path


def load_bench_conftest():
    return load_by_path("benchmarks/conftest.py", "bench_conftest")


def test_cuda_cases_use_tf32_matmuls_and_restore_the_setting():
    conftest = load_bench_conftest()
    before = torch.get_float32_matmul_precision()
    assert before == "highest"  # torch's default; a test that changed it would leak into others
    with conftest.training_matmul_precision("cuda"):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with conftest.training_matmul_precision("cpu"):
        assert torch.get_float32_matmul_precision() == before
