"""The tiled torch rasterizer against the dense per-pixel-per-Gaussian reference."""

import pytest
import torch

from fabric_mvsplat.model.decoder import render
from fabric_mvsplat.model.decoder import rasterize_torch
from dense_reference import render_dense
from fabric_mvsplat.model.decoder.sh import SH_C0
from fabric_mvsplat.types import Gaussians
from synthetic_scenes import look_at_cameras, random_gaussians


def leaves(gaussians: Gaussians) -> list[torch.Tensor]:
    tensors = [gaussians.means, gaussians.covariances, gaussians.harmonics, gaussians.opacities]
    for tensor in tensors:
        tensor.requires_grad_(True)
    return tensors


def compare_with_dense(gaussians, extrinsics, intrinsics, near, far, shape, depth_mode="depth",
                       background=(0.0, 0.0, 0.0), backend="torch", **render_kwargs):
    tensors = leaves(gaussians)
    ours = render(gaussians, (extrinsics, intrinsics, near, far), shape, depth_mode, backend=backend,
                  background_color=background, **render_kwargs)
    dense = render_dense(gaussians, extrinsics, intrinsics, near, far, shape, depth_mode, background_color=background)
    assert (ours.color - dense.color).abs().max() <= 1e-5
    assert (ours.depth - dense.depth).abs().max() <= 1e-5
    with torch.no_grad():  # the inference path reuses the selection's alphas
        inference = render(gaussians, (extrinsics, intrinsics, near, far), shape, depth_mode, backend=backend,
                           background_color=background, **render_kwargs)
    assert (inference.color - dense.color).abs().max() <= 1e-5
    weights = torch.randn_like(ours.color, generator=torch.Generator().manual_seed(7))
    loss_ours = (ours.color * weights).sum() + 0.1 * ours.depth.sum()
    loss_dense = (dense.color * weights).sum() + 0.1 * dense.depth.sum()
    for name, a, b in zip(("means", "covariances", "harmonics", "opacities"),
                          torch.autograd.grad(loss_ours, tensors), torch.autograd.grad(loss_dense, tensors)):
        scale = b.abs().max()
        assert scale > 0, f"{name}: the dense gradient is zero, the scene exercises nothing"
        assert (a - b).abs().max() <= 1e-4 * scale, name
    return ours


def cameras(batch, views, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    extrinsics, intrinsics = look_at_cameras(batch, views, generator, dtype)
    near = torch.full((batch, views), 0.5, dtype=dtype)
    far = torch.full((batch, views), 20.0, dtype=dtype)
    return extrinsics, intrinsics, near, far


@pytest.mark.isa_sensitive  # a tolerance at float rounding: rerun with the AVX2 kernels
@pytest.mark.parametrize("seed", [0, 1])
def test_random_scenes_match_dense(seed):
    """Random scenes with Gaussians behind the camera, off-screen, straddling tile borders of a
    non-multiple-of-16 image, several scenes and views in one call."""
    generator = torch.Generator().manual_seed(seed)
    gaussians = random_gaussians(2, 400, generator, torch.float64)
    z = gaussians.means[..., 2]
    assert (z < 0.1).any() and (gaussians.means[..., 0].abs() > 1.5 * z.abs()).any()
    ours = compare_with_dense(gaussians, *cameras(2, 3, seed), (37, 45), background=(0.2, 0.5, 1.0))
    assert ours.color.shape == (2, 3, 3, 37, 45) and ours.depth.shape == (2, 3, 37, 45)
    assert ours.color.std() > 0.05  # a real image, not background


@pytest.mark.parametrize("tile_size, block", [(4, 2), (16, 3), (5, 1)])
def test_many_depth_blocks_with_checkpointing_match_dense(monkeypatch, tile_size, block):
    """Tiny depth blocks force many steps with tiles dropping out between them, and a zero element
    budget forces the checkpointed backward; other tile sizes (one not dividing the image) give the
    same image, since footprints do not depend on the tiling."""
    calls = []
    original = rasterize_torch.composite_block
    monkeypatch.setattr(rasterize_torch, "composite_block", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(rasterize_torch, "TILE_SIZE", tile_size)
    monkeypatch.setattr(rasterize_torch, "DEPTH_BLOCK", block)
    monkeypatch.setattr(rasterize_torch, "CHECKPOINT_ELEMENTS", 0)
    gaussians = random_gaussians(1, 300, torch.Generator().manual_seed(3), torch.float64)
    compare_with_dense(gaussians, *cameras(1, 2, 3), (33, 40))
    assert len(calls) > 10


def tile_border_scene():
    """Six small Gaussians centred exactly on tile corners and edges of a 48x48 image (pixels 8, 16 and 32 lie on
    the borders of 4-, 8- and 16-pixel tiles) -> (gaussians, extrinsics, intrinsics, near, far)."""
    _, _, near, far = cameras(1, 1, 0)
    extrinsics = torch.eye(4, dtype=torch.float64)[None, None]
    intrinsics = torch.tensor([[[[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]]], dtype=torch.float64)
    pixels = torch.tensor([[16.0, 16.0], [16.0, 8.0], [31.5, 16.0], [8.0, 32.0], [0.0, 0.0], [47.9, 40.0]],
                          dtype=torch.float64)
    depth = 2.0
    means = torch.cat([(pixels - 24.0) / 48.0 * depth, torch.full((6, 1), depth, dtype=torch.float64)], dim=-1)
    covariances = torch.eye(3, dtype=torch.float64).repeat(6, 1, 1) * 0.03**2
    harmonics = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gaussians = Gaussians(means[None], covariances[None], harmonics[None],
                          torch.full((1, 6), 0.8, dtype=torch.float64))
    return gaussians, extrinsics, intrinsics, near, far


@pytest.mark.isa_sensitive  # a tolerance at float rounding: rerun with the AVX2 kernels
def test_tile_border_gaussians_match_dense():
    """Gaussians on the borders of the 4-, 8- and 16-pixel tiles."""
    compare_with_dense(*tile_border_scene(), (48, 48))


def layered_scene():
    """Eight Gaussians on the optical axis, 0.1 apart in depth, centred on pixel (8, 8) of a 17x17 image: four
    opaque (0.95) in front of four faint (0.1) -> (gaussians, their colours [8], cameras)."""
    count = 8
    means = torch.tensor([[0.0, 0.0, 2.0 + 0.1 * i] for i in range(count)], dtype=torch.float64)
    covariances = torch.eye(3, dtype=torch.float64).repeat(count, 1, 1) * 0.2**2
    colors = torch.linspace(0.1, 0.9, count, dtype=torch.float64)
    harmonics = ((colors - 0.5) / SH_C0)[:, None, None].expand(count, 3, 1).clone()
    opacities = torch.tensor([[0.95, 0.95, 0.95, 0.95, 0.1, 0.1, 0.1, 0.1]], dtype=torch.float64)
    gaussians = Gaussians(means[None], covariances[None], harmonics[None], opacities)
    extrinsics = torch.eye(4, dtype=torch.float64)[None, None]
    intrinsics = torch.tensor([[[[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]]], dtype=torch.float64)
    near, far = torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 10.0, dtype=torch.float64)
    return gaussians, colors, (extrinsics, intrinsics, near, far)


@pytest.mark.parametrize("block", [1, 2, 16])
def test_early_stop_keeps_only_the_front_layers(monkeypatch, block):
    """Identical opaque layers: T after k layers is 0.05^k (1.25e-4 after 3), so the 4th would push T
    below 1e-4 and the pixel stops after 3; the colour is the front three layers' weighted colours.
    Behind them a faint layer (alpha 0.1: T would stay above 1e-4) must stay out too: a stopped pixel
    stays stopped, also when the stop falls on a depth-block boundary."""
    monkeypatch.setattr(rasterize_torch, "DEPTH_BLOCK", block)
    gaussians, colors, (extrinsics, intrinsics, near, far) = layered_scene()
    output = render(gaussians, (extrinsics, intrinsics, near, far), (17, 17), backend="torch")
    centre = output.color[0, 0, 0, 8, 8]
    # The pixel centre (8.5, 8.5) is the projected mean, so alpha = 0.95 exactly for the opaque layers.
    expected = sum(0.95 * 0.05**k * colors[k] for k in range(3))
    assert torch.isclose(centre, expected, atol=1e-12)
    assert torch.isclose(output.alpha[0, 0, 8, 8], torch.tensor(1 - 0.05**3, dtype=torch.float64), atol=1e-12)
    compare_with_dense(gaussians, extrinsics, intrinsics, near, far, (17, 17))


@pytest.mark.isa_sensitive  # a tolerance at float rounding: rerun with the AVX2 kernels
def test_float32_matches_dense_in_float64():
    float32_matches_dense_in_float64("torch")


def float32_matches_dense_in_float64(backend: str) -> None:
    """A float32 render by `backend` against the dense reference in float64."""
    gaussians = random_gaussians(1, 200, torch.Generator().manual_seed(5), torch.float32)
    extrinsics, intrinsics, near, far = cameras(1, 2, 5, torch.float32)
    ours = render(gaussians, (extrinsics, intrinsics, near, far), (24, 30), backend=backend)
    as64 = Gaussians(*(t.double() for t in (gaussians.means, gaussians.covariances, gaussians.harmonics,
                                             gaussians.opacities)))
    dense = render_dense(as64, extrinsics.double(), intrinsics.double(), near.double(), far.double(), (24, 30))
    error = (ours.color.double() - dense.color).abs()
    # Rounding can flip a pair sitting exactly on the alpha = 1/255 edge; nearly all pixels agree tightly.
    assert (error <= 1e-4).float().mean() > 0.999
    assert error.max() <= 2e-2
