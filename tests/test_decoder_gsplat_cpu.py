"""The gsplat backend through gsplat 1.5.3's real Python code, on CPU.

`gsplat.rendering.rasterization()` runs unchanged (its shape checks, covariance triangle, packed /
unpacked handling, channel padding and autograd Functions); only the compiled kernels it reaches
through `gsplat.cuda._backend._C` are replaced, by the CPU versions in tests/gsplat_cpu_kernels.py
written from gsplat's .cu sources. The result must match our torch backend on batches of several
scenes x views whose opacities differ per scene.
"""

import sys

import pytest
import torch

from fabric_mvsplat.model.decoder import rendering
from fabric_mvsplat.model.decoder.rendering import DEPTH_MODES, render
from synthetic_scenes import look_at_cameras, random_gaussians
from fabric_mvsplat.types import Gaussians

FIELDS = ("means", "covariances", "harmonics", "opacities")

from gsplat_cpu_kernels import cpu_backend_module

SHAPE = (37, 52)  # not a multiple of the 16 px tile
OPACITY_RANGES = ((0.02, 0.3), (0.5, 0.95), (0.2, 0.8))  # every scene its own; all below the 0.99 cap


@pytest.fixture
def gsplat_on_cpu(monkeypatch):
    pytest.importorskip("gsplat", minversion="1.5")
    # gsplat imports `_C` from this module at call time; a stand-in module also keeps its JIT build from starting.
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", cpu_backend_module())
    # render() refuses the gsplat backend for CPU tensors; here the kernels are CPU ones.
    monkeypatch.setattr(rendering, "resolve_backend", lambda backend, device: backend)


def scenes(count: int = 250, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    per_scene = [random_gaussians(1, count, generator, opacity_range=r) for r in OPACITY_RANGES]
    gaussians = Gaussians(*(torch.cat([getattr(scene, field) for scene in per_scene]) for field in FIELDS))
    batch = len(OPACITY_RANGES)
    extrinsics, intrinsics = look_at_cameras(batch, 3, generator)
    near = torch.tensor([[0.5, 1.0, 2.5], [0.8, 0.8, 0.8], [1.2, 0.6, 1.0]])  # per view: culling differs
    far = torch.full((batch, 3), 30.0)
    return gaussians, extrinsics, intrinsics, near, far


def render_both(depth_mode, with_grad: bool, **kwargs):
    gaussians, *cameras = scenes(**kwargs)
    weights = torch.randn(len(OPACITY_RANGES), 3, 3, *SHAPE, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("torch", "gsplat"):
        leaves = [getattr(gaussians, field).clone().requires_grad_(with_grad) for field in FIELDS]
        output = render(Gaussians(*leaves), cameras, SHAPE, depth_mode, backend=backend,
                        background_color=(0.1, 0.2, 0.3))
        grads = None
        if with_grad:
            loss = (output.color * weights).sum() + (0.1 * output.depth.sum() if depth_mode else 0)
            grads = torch.autograd.grad(loss, leaves)
        results[backend] = output, grads
    return results


def symmetrised(covariance_grad):
    return 0.5 * (covariance_grad + covariance_grad.transpose(-1, -2))


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_gsplat_code_matches_torch_backend_images_and_gradients(gsplat_on_cpu):
    results = render_both("depth", with_grad=True)
    (torch_out, torch_grads), (gsplat_out, gsplat_grads) = results["torch"], results["gsplat"]
    assert torch_out.color.std() > 0.05 and torch_out.depth.max() > 0.5  # real content, not background
    assert (gsplat_out.color - torch_out.color).abs().max() <= 1e-4
    assert (gsplat_out.depth - torch_out.depth).abs().max() <= 1e-4
    for name, ours, theirs in zip(FIELDS, torch_grads, gsplat_grads):
        if name == "covariances":
            ours, theirs = symmetrised(ours), symmetrised(theirs)
        assert theirs.abs().max() > 0, name
        assert relative(theirs, ours) <= 1e-3, f"{name}: max gradient difference {relative(theirs, ours):.2e} of max"


def test_covariance_gradient_is_symmetric_after_the_call(gsplat_on_cpu):
    """gsplat differentiates only the upper triangle; the call symmetrises first, so the model sees the
    same symmetric gradient as from the torch backend (not all of it on the upper entries)."""
    results = render_both(None, with_grad=True, count=60)
    covariance_grad = results["gsplat"][1][1]
    assert covariance_grad.abs().max() > 0
    assert torch.allclose(covariance_grad, covariance_grad.transpose(-1, -2), atol=1e-9)
    torch_grad = results["torch"][1][1]
    assert relative(covariance_grad, torch_grad) <= 1e-3


@pytest.mark.parametrize("depth_mode", DEPTH_MODES)
def test_every_depth_mode_matches_torch_backend(gsplat_on_cpu, depth_mode):
    results = render_both(depth_mode, with_grad=False, count=120)
    torch_out, gsplat_out = results["torch"][0], results["gsplat"][0]
    assert (gsplat_out.color - torch_out.color).abs().max() <= 1e-4
    assert (gsplat_out.depth - torch_out.depth).abs().max() <= 1e-4
    assert torch_out.depth.abs().max() > 0.1


def test_cpu_kernels_match_gsplats_own_torch_reference():
    """Projection, tile intersection and offsets against gsplat's pure-torch versions of those kernels
    (gsplat/cuda/_torch_impl.py; without opacities, where both use the 3.33-sigma radius)."""
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    import gsplat_cpu_kernels as kernels

    gaussians, extrinsics, intrinsics, _, _ = scenes(count=40)
    means, covariances = gaussians.means[:2], gaussians.covariances[:2]  # [2, N, ...], 3 cameras each
    viewmats = extrinsics[:2].inverse().contiguous()
    ks = intrinsics[:2] * torch.tensor([SHAPE[1], SHAPE[0], 1.0])[:, None]  # normalised -> pixels, rows x W, H, 1
    upper = covariances[..., [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]].contiguous()
    height, width = SHAPE
    radii, means2d, depths, conics, _ = kernels.projection_ewa_3dgs_fused_fwd(
        means, upper, None, None, None, viewmats, ks, width, height, 0.3, 0.01, 1e10, 0.0, False, kernels.PINHOLE)
    ref_radii, ref_means2d, ref_depths, ref_conics, _ = torch_impl._fully_fused_projection(
        means, covariances, viewmats, ks, width, height, 0.3, 0.01, 1e10)
    valid = (radii > 0).all(-1)
    assert valid.sum() > 30 and (~valid).sum() > 30  # culling exercised both ways
    assert torch.equal(radii, ref_radii)
    assert torch.allclose(means2d[valid], ref_means2d[valid], rtol=1e-5, atol=1e-4)
    assert torch.allclose(depths[valid], ref_depths[valid], rtol=1e-6)
    assert torch.allclose(conics[valid], ref_conics[valid], rtol=1e-4, atol=1e-6)

    # The backward kernel (autograd of our forward) against autograd through gsplat's torch projection.
    generator = torch.Generator().manual_seed(5)
    v_means2d, v_depths, v_conics = (torch.randn(t.shape, generator=generator) * valid.reshape(
        valid.shape + (1,) * (t.ndim - valid.ndim)) for t in (means2d, depths, conics))
    v_means, v_upper, _, _, _ = kernels.projection_ewa_3dgs_fused_bwd(
        means, upper, None, None, viewmats, ks, width, height, 0.3, kernels.PINHOLE, radii, conics, None,
        v_means2d, v_depths, v_conics, None, False)
    leaves = [means.clone().requires_grad_(True), covariances.clone().requires_grad_(True)]
    _, ref_m, ref_d, ref_c, _ = torch_impl._fully_fused_projection(leaves[0], leaves[1], viewmats, ks, width, height)
    loss = sum((v * torch.where(v != 0, o, torch.zeros_like(o))).sum()
               for v, o in ((v_means2d, ref_m), (v_depths, ref_d), (v_conics, ref_c)))
    ref_v_means, ref_v_covariances = torch.autograd.grad(loss, leaves)
    g = ref_v_covariances  # upper-triangle layout of the kernel: off-diagonal pairs summed
    ref_v_upper = torch.stack([g[..., 0, 0], g[..., 0, 1] + g[..., 1, 0], g[..., 0, 2] + g[..., 2, 0], g[..., 1, 1],
                               g[..., 1, 2] + g[..., 2, 1], g[..., 2, 2]], dim=-1)
    assert ref_v_means.abs().max() > 0 and ref_v_upper.abs().max() > 0
    assert relative(v_means, ref_v_means) < 1e-4 and relative(v_upper, ref_v_upper) < 1e-4

    means2d, depths = ref_means2d.contiguous(), ref_depths.contiguous()
    tile_width, tile_height = -(-width // 16), -(-height // 16)
    tiles, isect_ids, flatten_ids = kernels.intersect_tile(means2d, radii, depths, None, None, 6, 16, tile_width,
                                                           tile_height, True, False)
    ref_tiles, ref_isect_ids, ref_flatten_ids = torch_impl._isect_tiles(means2d, radii, depths, 16, tile_width,
                                                                        tile_height)
    assert torch.equal(tiles, ref_tiles) and torch.equal(isect_ids, ref_isect_ids)
    assert torch.equal(flatten_ids, ref_flatten_ids)
    offsets = kernels.intersect_offset(isect_ids, 6, tile_width, tile_height)
    assert torch.equal(offsets, torch_impl._isect_offset_encode(isect_ids, 6, tile_width, tile_height))
