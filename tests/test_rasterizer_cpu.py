"""The compiled CPU rasterizer (csrc/rasterize_cpu.cpp) against the dense reference and the torch rasterizer,
and its fallback to the torch rasterizer when it cannot be built."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fabric_mvsplat.model.decoder import rasterize_cpu, render
from fabric_mvsplat.model.decoder.build_lock import build_lock
from fabric_mvsplat.types import Gaussians
from synthetic_scenes import look_at_cameras, pixel_aligned_scene, random_gaussians
from test_rasterizer import (cameras, compare_with_dense, float32_matches_dense_in_float64, layered_scene, leaves,
                             tile_border_scene)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kernels():
    module = rasterize_cpu.load_cpu_kernels()
    if module is None:  # the fallback has its own tests below; a machine without g++ cannot check the kernel
        pytest.skip(f"compiled CPU rasterizer unavailable here: {rasterize_cpu._state.get('reason')}")
    return module


@pytest.mark.parametrize("seed", [0, 1])
def test_random_scenes_match_dense(kernels, seed):
    """Gaussians behind the camera and off-screen, several scenes and views, an odd image size (37x45:
    partial tiles on the right and bottom), a coloured background."""
    gaussians = random_gaussians(2, 400, torch.Generator().manual_seed(seed), torch.float64)
    ours = compare_with_dense(gaussians, *cameras(2, 3, seed), (37, 45), background=(0.2, 0.5, 1.0), backend="cpu")
    assert ours.color.shape == (2, 3, 3, 37, 45) and ours.color.std() > 0.05


@pytest.mark.parametrize("tile_size", [3, 5, 16])
def test_tile_sizes_match_dense(kernels, monkeypatch, tile_size):
    """The image does not depend on the tiling: tiles not dividing the image, and tiles larger than it."""
    monkeypatch.setattr(rasterize_cpu, "TILE_SIZE", tile_size)
    gaussians = random_gaussians(1, 300, torch.Generator().manual_seed(3), torch.float64)
    compare_with_dense(gaussians, *cameras(1, 2, 3), (33, 14), backend="cpu")


@pytest.mark.parametrize("tile_size", [8, 16])
def test_needle_gaussians_match_dense(kernels, monkeypatch, tile_size):
    """Thin rotated ellipses (axes up to 100:1) crossing tiles: the kernel visits only the pixels inside each
    ellipse's box, and that box must never leave out a pixel the exact alpha test keeps."""
    monkeypatch.setattr(rasterize_cpu, "TILE_SIZE", tile_size)
    gaussians = random_gaussians(1, 300, torch.Generator().manual_seed(11), torch.float64, scale_range=(0.005, 0.5))
    ours = compare_with_dense(gaussians, *cameras(1, 2, 11), (45, 38), background=(0.1, 0.1, 0.1), backend="cpu")
    assert ours.alpha.mean() > 0.3


def test_empty_tiles_match_dense(kernels):
    """Small Gaussians in one corner: most tiles have no Gaussian at all (background, zero gradient)."""
    gaussians = random_gaussians(1, 60, torch.Generator().manual_seed(4), torch.float64, scale_range=(0.01, 0.03))
    means = gaussians.means.detach().clone()
    means[..., 2] = means[..., 2].abs() + 2.0
    means[..., :2] = -0.35 * means[..., 2:] + 0.05 * torch.rand(1, 60, 2, generator=torch.Generator().manual_seed(5),
                                                                dtype=torch.float64)
    gaussians = Gaussians(means, gaussians.covariances, gaussians.harmonics, gaussians.opacities)
    extrinsics = torch.eye(4, dtype=torch.float64)[None, None]
    intrinsics = torch.tensor([[[[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]]], dtype=torch.float64)
    near, far = torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 20.0, dtype=torch.float64)
    ours = compare_with_dense(gaussians, extrinsics, intrinsics, near, far, (41, 39), background=(0.3, 0.3, 0.3),
                              backend="cpu")
    empty = (ours.alpha == 0).float().mean()
    assert 0.5 < empty < 1.0, f"the scene should leave most, not all, pixels empty ({empty:.2f})"


def test_nothing_visible_gives_background_and_zero_gradients(kernels):
    gaussians = random_gaussians(1, 50, torch.Generator().manual_seed(6), torch.float64)
    means = gaussians.means.detach().clone()
    means[..., 2] = -means[..., 2].abs() - 1.0  # all behind the camera
    gaussians = Gaussians(means, gaussians.covariances, gaussians.harmonics, gaussians.opacities)
    tensors = leaves(gaussians)
    extrinsics, intrinsics, near, far = cameras(1, 1, 0)
    extrinsics = torch.eye(4, dtype=torch.float64)[None, None]
    output = render(gaussians, (extrinsics, intrinsics, near, far), (10, 13), "depth", backend="cpu",
                    background_color=(0.1, 0.2, 0.3))
    assert torch.equal(output.color[0, 0], torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)[:, None, None]
                       .expand(3, 10, 13))
    grads = torch.autograd.grad(output.color.sum() + output.depth.sum(), tensors, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


def test_tile_border_gaussians_match_dense(kernels):
    """Small Gaussians centred exactly on tile corners and edges (8-pixel tiles: 16, 8, 32, 40)."""
    compare_with_dense(*tile_border_scene(), (48, 48), backend="cpu")


def test_early_stop_keeps_only_the_front_layers(kernels):
    """T after 3 opaque layers is 0.05^3 = 1.25e-4; the 4th would take it below 1e-4, so the pixel stops,
    and the faint layers behind stay out too (same scene as the torch rasterizer's test)."""
    gaussians, colors, (extrinsics, intrinsics, near, far) = layered_scene()
    output = render(gaussians, (extrinsics, intrinsics, near, far), (17, 17), backend="cpu")
    expected = sum(0.95 * 0.05**k * colors[k] for k in range(3))
    assert torch.isclose(output.color[0, 0, 0, 8, 8], expected, atol=1e-12)
    assert torch.isclose(output.alpha[0, 0, 8, 8], torch.tensor(1 - 0.05**3, dtype=torch.float64), atol=1e-12)
    compare_with_dense(gaussians, extrinsics, intrinsics, near, far, (17, 17), backend="cpu")


def test_mvsplat_scene_matches_torch_rasterizer(kernels):
    """A Gaussian per pixel of two context views (the training case) rendered into 3 views, float32: images,
    depth and every gradient as the torch rasterizer's, up to float32 rounding."""
    generator = torch.Generator().manual_seed(32)
    gaussians = pixel_aligned_scene(1, 2, (24, 24), generator)
    extrinsics, intrinsics = look_at_cameras(1, 3, generator)
    near, far = torch.ones(1, 3), torch.full((1, 3), 100.0)
    outputs, grads = {}, {}
    for backend in ("cpu", "torch"):
        tensors = leaves(Gaussians(*(t.detach().clone() for t in (gaussians.means, gaussians.covariances,
                                                                   gaussians.harmonics, gaussians.opacities))))
        outputs[backend] = render(Gaussians(*tensors), (extrinsics, intrinsics, near, far), (24, 24), "depth",
                                  backend=backend)
        weights = torch.randn_like(outputs[backend].color, generator=torch.Generator().manual_seed(1))
        loss = (outputs[backend].color * weights).sum() + outputs[backend].depth.mean()
        grads[backend] = torch.autograd.grad(loss, tensors)
    assert outputs["torch"].color.std() > 0.05
    assert (outputs["cpu"].color - outputs["torch"].color).abs().max() < 1e-4
    assert (outputs["cpu"].depth - outputs["torch"].depth).abs().max() < 1e-3 * outputs["torch"].depth.abs().max()
    for name, a, b in zip(("means", "covariances", "harmonics", "opacities"), grads["cpu"], grads["torch"]):
        assert (a - b).abs().max() <= 2e-3 * b.abs().max(), name


def test_float32_matches_dense_in_float64(kernels):
    float32_matches_dense_in_float64("cpu")


def small_scene():
    gaussians = random_gaussians(1, 100, torch.Generator().manual_seed(8), torch.float64)
    return gaussians, cameras(1, 2, 8)


def test_failed_build_falls_back_with_one_line(monkeypatch, capsys):
    """A build that raises (a broken compiler, a header mismatch): one line on stderr, then the torch
    rasterizer's images."""
    def broken_build(*args, **kwargs):
        raise RuntimeError("Error building extension 'fabric_mvsplat_rasterize_cpu'\nc++: fatal error: ...")

    monkeypatch.setattr(rasterize_cpu, "_state", {})
    monkeypatch.setattr(rasterize_cpu, "is_built", lambda: False)
    monkeypatch.setattr("torch.utils.cpp_extension.load", broken_build)
    gaussians, cams = small_scene()
    ours = render(gaussians, cams, (20, 20), "depth", backend="cpu")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiled CPU rasterizer unavailable: building it failed" in err[0], err
    reference = render(gaussians, cams, (20, 20), "depth", backend="torch")
    assert torch.equal(ours.color, reference.color) and torch.equal(ours.depth, reference.depth)
    render(gaussians, cams, (20, 20), "depth", backend="cpu")
    assert capsys.readouterr().err == "", "the fallback is announced once per process"


def test_missing_compiler_falls_back_in_a_fresh_process(tmp_path):
    """CXX names no compiler and the extension cache is empty: training renders with the torch rasterizer,
    stderr says so in one line, the exit code is 0."""
    script = (
        "import torch, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from fabric_mvsplat.model.decoder import render\n"
        "from synthetic_scenes import random_gaussians\n"
        "from test_rasterizer import cameras\n"
        "g = random_gaussians(1, 100, torch.Generator().manual_seed(8), torch.float64)\n"
        "cams = cameras(1, 2, 8)\n"
        "a = render(g, cams, (20, 20), backend='auto').color\n"
        "b = render(g, cams, (20, 20), backend='torch').color\n"
        "assert torch.equal(a, b)\n"
        "print('rendered')\n")
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "rendered"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "no-such-compiler" in lines[0], lines


def test_a_build_stopped_midway_neither_hangs_nor_races_later_runs(kernels, tmp_path, monkeypatch):
    """A process killed while compiling (Ctrl-C, SIGKILL, a pre-empted job) leaves torch's lock file in the build
    directory, and torch alone waits on it forever. Here another process "builds": it holds the build lock and has
    left torch's lock file. A fresh process says it waits, and once the builder is gone it clears the stale file,
    builds and loads the kernels."""
    # A build directory of its own (the fresh process compiles there, 30-60 s): in the shared one, another test
    # worker loading the kernels waits on this lock too, may take it first and clear the stale file itself.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    script = ("from fabric_mvsplat.model.decoder import rasterize_cpu\n"
              "assert rasterize_cpu.load_cpu_kernels() is not None\n"
              "print('loaded')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    stale = rasterize_cpu.build_directory() / "lock"
    stderr_path = tmp_path / "stderr.txt"
    try:
        with build_lock(rasterize_cpu.build_directory(), "the CPU rasterizer"), open(stderr_path, "w") as stderr:
            stale.touch()  # the builder's torch lock, as a killed build leaves it
            process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                       stderr=stderr, text=True)
            for _ in range(1200):  # until it reports waiting (it imports torch first), at most 2 minutes
                if "waiting for another process" in stderr_path.read_text() or process.poll() is not None:
                    break
                time.sleep(0.1)
        stdout, _ = process.communicate(timeout=400)  # the builder is gone: the lock is released
    finally:
        stale.unlink(missing_ok=True)
    printed = stderr_path.read_text()
    assert process.returncode == 0 and stdout.strip() == "loaded", printed[-2000:]
    assert "waiting for another process compiling the CPU rasterizer" in printed
    assert f"removed {stale}, left by a build that was stopped" in printed
    assert not stale.exists()


def test_a_filesystem_without_locks_builds_unguarded_and_says_what_to_delete(tmp_path, monkeypatch, capsys):
    """Some network mounts refuse file locks: the build goes on as torch alone would run it, a torch lock file there
    is left alone (it may be a live build's), and one line says which file to delete after a stopped build."""
    import errno

    from fabric_mvsplat.model.decoder import build_lock as module

    def no_locks(fd):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(module, "try_lock", no_locks)
    torch_lock = tmp_path / "lock"
    torch_lock.touch()
    ran = []
    with module.build_lock(tmp_path, "the CPU rasterizer"):
        ran.append(True)
    assert ran == [True] and torch_lock.exists()
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "without file locks (No locks available)" in line and f"delete {torch_lock}" in line
