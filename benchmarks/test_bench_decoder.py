"""Decoder speed and peak memory: torch rasterizer (CPU), dense reference (CPU), gsplat (CUDA).

Scenes are MVSplat-shaped (`pixel_aligned_scene`: one Gaussian per pixel of 2 context views, so
64x64 -> 8,192 Gaussians and 256x256 -> 131,072), rendered into 4 target views, batch 1.

    pytest benchmarks/test_bench_decoder.py                          # timings (large cases included)
    pytest benchmarks/test_bench_decoder.py --benchmark-disable      # smoke run: small cases once

The smoke run skips cases marked `large` (torch at 256x256, dense at 64x64); the dense reference
keeps a 32x32 smoke case so the comparison code path is exercised in CI.
"""

import pytest
import torch

from fabric_mvsplat.model.decoder import render
from tests.dense_reference import render_dense
from tests.synthetic_scenes import look_at_cameras, pixel_aligned_scene
from fabric_mvsplat.types import Gaussians

TARGET_VIEWS = 4
CONTEXT_VIEWS = 2
_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat backend needs CUDA")


def scene(size: int, device: str) -> tuple[Gaussians, tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(size)
    gaussians = pixel_aligned_scene(1, CONTEXT_VIEWS, (size, size), generator)
    extrinsics, intrinsics = look_at_cameras(1, TARGET_VIEWS, generator)
    near, far = torch.ones(1, TARGET_VIEWS), torch.full((1, TARGET_VIEWS), 100.0)
    gaussians = Gaussians(*(t.to(device).requires_grad_(True) for t in (
        gaussians.means, gaussians.covariances, gaussians.harmonics, gaussians.opacities)))
    return gaussians, tuple(t.to(device) for t in (extrinsics, intrinsics, near, far))


def make_case(renderer, size: int, mode: str, device: str):
    gaussians, cameras = scene(size, device)
    leaves = [gaussians.means, gaussians.covariances, gaussians.harmonics, gaussians.opacities]

    def forward():
        with torch.no_grad():
            return renderer(gaussians, cameras, (size, size)).color

    def forward_backward():
        color = renderer(gaussians, cameras, (size, size)).color
        return torch.autograd.grad(color.square().sum(), leaves)

    info = {"gaussians": gaussians.means.shape[1], "views": TARGET_VIEWS, "image": f"{size}x{size}", "mode": mode}
    return (forward if mode == "forward" else forward_backward), info


def check(output, mode: str) -> None:
    first = output if mode == "forward" else output[0]
    assert torch.isfinite(first).all() and first.abs().sum() > 0


def torch_backend(*args):
    return render(*args, backend="torch")


def gsplat_backend(*args):
    return render(*args, backend="gsplat")


MODES = ["forward", "forward_backward"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [64, pytest.param(256, marks=pytest.mark.large)])
def test_torch_rasterizer_cpu(bench, size, mode):
    fn, info = make_case(torch_backend, size, mode, "cpu")
    output = bench(fn, device="cpu", rounds=5 if size == 64 else 2, items=TARGET_VIEWS, unit="views",
                   backend="torch", **info)
    check(output, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [32, pytest.param(64, marks=pytest.mark.large)])
def test_dense_reference_cpu(bench, size, mode):
    fn, info = make_case(lambda gaussians, cameras, shape: render_dense(gaussians, *cameras, shape), size, mode, "cpu")
    output = bench(fn, device="cpu", rounds=1, warmup=0, items=TARGET_VIEWS, unit="views", backend="dense", **info)
    check(output, mode)


@_CUDA
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [64, 256])
def test_gsplat_cuda(bench, size, mode):
    fn, info = make_case(gsplat_backend, size, mode, "cuda")
    output = bench(fn, device="cuda", rounds=20, warmup=3, items=TARGET_VIEWS, unit="views", backend="gsplat",
                   paper="render_view", paper_count=TARGET_VIEWS, **info)
    check(output, mode)


@_CUDA
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [64, 256])
def test_torch_rasterizer_cuda(bench, size, mode):
    fn, info = make_case(torch_backend, size, mode, "cuda")
    output = bench(fn, device="cuda", rounds=10, warmup=2, items=TARGET_VIEWS, unit="views", backend="torch", **info)
    check(output, mode)
