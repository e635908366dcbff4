"""Decoder conventions: SH basis, principal point, near culling, depth modes, backends, module."""

import math

import pytest
import torch

from fabric_mvsplat.errors import ConfigError
from fabric_mvsplat.model.decoder import DecoderSplatting, DecoderSplattingCfg, render, resolve_backend
from fabric_mvsplat.model.decoder.projection import pixel_intrinsics
from fabric_mvsplat.model.decoder.sh import SH_C0, SH_C1, SH_C2, SH_C3, sh_to_color
from fabric_mvsplat.types import Gaussians

F64 = torch.float64


def permuted_basis(d: torch.Tensor) -> torch.Tensor:
    """The modified rasterizer's basis written out in the unpermuted direction (x, y, z) = d, i.e. the
    Inria basis at (x', y', z') = (z, x, y); entry 14 is the consistent form (its forward differs)."""
    x, y, z = d.unbind(-1)
    return torch.stack([
        torch.full_like(x, SH_C0),
        -SH_C1 * x, SH_C1 * y, -SH_C1 * z,
        SH_C2[0] * z * x, SH_C2[1] * x * y, SH_C2[2] * (2 * y * y - z * z - x * x), SH_C2[3] * z * y,
        SH_C2[4] * (z * z - x * x),
        SH_C3[0] * x * (3 * z * z - x * x), SH_C3[1] * z * x * y, SH_C3[2] * x * (4 * y * y - z * z - x * x),
        SH_C3[3] * y * (2 * y * y - 3 * z * z - 3 * x * x), SH_C3[4] * z * (4 * y * y - z * z - x * x),
        SH_C3[5] * y * (z * z - x * x), SH_C3[6] * z * (z * z - 3 * x * x),
    ], dim=-1)


def unit_directions(count: int, seed: int) -> torch.Tensor:
    d = torch.randn(count, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return d / d.norm(dim=-1, keepdim=True)


def test_sh_matches_permuted_basis_with_coefficient_14_quirk():
    d = unit_directions(64, 0)
    harmonics = torch.randn(64, 3, 25, generator=torch.Generator().manual_seed(1), dtype=F64, requires_grad=True)
    color = sh_to_color(harmonics, d)
    basis = permuted_basis(d)
    x, y, z = d.unbind(-1)
    forward_basis = basis.clone()
    forward_basis[:, 14] = SH_C3[5] * z * (z * z - x * x)  # the original's forward quirk
    expected = ((harmonics[..., :16] * forward_basis[:, None]).sum(-1) + 0.5).clamp_min(0)
    assert torch.allclose(color, expected, atol=1e-12)
    assert (expected == 0).any() and (expected > 0).any()  # the clamp is exercised

    # Backward: the consistent basis for every coefficient; degree 4 gets nothing.
    grad = torch.autograd.grad(color.sum(), harmonics)[0]
    lit = (expected > 0).to(F64)[..., None]
    assert torch.allclose(grad[..., :16], lit * basis[:, None], atol=1e-12)
    assert torch.equal(grad[..., 16:], torch.zeros_like(grad[..., 16:]))


def test_sh_degree_four_coefficients_have_no_effect():
    d = unit_directions(16, 2)
    harmonics = torch.randn(16, 3, 25, generator=torch.Generator().manual_seed(3), dtype=F64)
    changed = harmonics.clone()
    changed[..., 16:] += 5.0
    assert torch.equal(sh_to_color(harmonics, d), sh_to_color(changed, d))
    # Lower degrees use only their own coefficients.
    assert torch.allclose(sh_to_color(harmonics[..., :4], d),
                          ((harmonics[..., :4] * permuted_basis(d)[:, None, :4]).sum(-1) + 0.5).clamp_min(0))


def camera(cx: float, cy: float, f: float = 1.0):
    extrinsics = torch.eye(4, dtype=F64)[None, None]
    intrinsics = torch.tensor([[[[f, 0, cx], [0, f, cy], [0, 0, 1]]]], dtype=F64)
    return extrinsics, intrinsics, torch.ones(1, 1, dtype=F64), torch.full((1, 1), 100.0, dtype=F64)


def point_gaussians(camera_points, opacity=0.9, color=0.8):
    points = torch.tensor(camera_points, dtype=F64)
    count = points.shape[0]
    harmonics = torch.full((1, count, 3, 1), (color - 0.5) / SH_C0, dtype=F64)
    covariances = torch.eye(3, dtype=F64).repeat(1, count, 1, 1) * 1e-8
    return Gaussians(points[None], covariances, harmonics, torch.full((1, count), opacity, dtype=F64))


def brightest_pixel(image: torch.Tensor) -> tuple[int, int]:
    index = int(image.argmax())
    return index // image.shape[-1], index % image.shape[-1]  # (row, column)


@pytest.mark.parametrize("use_principal_point", [True, False])
def test_gaussian_on_the_optical_axis_lands_on_the_principal_point(use_principal_point):
    h, w = 31, 33
    cx, cy = 0.3, 0.62
    gaussians = point_gaussians([[0.0, 0.0, 3.0]])
    output = render(gaussians, camera(cx, cy), (h, w), backend="torch", use_principal_point=use_principal_point)
    if use_principal_point:
        expected = (math.floor(cy * h), math.floor(cx * w))  # the real principal point
    else:
        expected = (h // 2, w // 2)  # the original renderer: centre of the image
    assert brightest_pixel(output.color[0, 0, 0]) == expected


def test_by_default_an_off_centre_principal_point_renders_as_the_original():
    """The shipped config, the decoder module and render() all default to the original renderer, which builds
    its projection from tan(fov / 2) alone: u = W/2 + (x/z) W / (2 tan(fov_x / 2)), likewise v (Inria's
    projection matrix and ndc-to-pixel mapping, pixel centres at i + 0.5)."""
    from loop_fixtures import compose_cfg

    for overrides in ([], ["+experiment=re10k"], ["+experiment=dtu"]):
        assert compose_cfg(overrides + ["optimizer.cosine_lr=false"]).model.decoder.use_principal_point is False
    h, w, cx, cy, f = 40, 60, 0.31, 0.64, 0.9
    point = (0.35, -0.2, 2.5)
    decoder = DecoderSplatting(DecoderSplattingCfg(), background_color=[0.0, 0.0, 0.0]).double()
    output = decoder(point_gaussians([list(point)]), *camera(cx, cy, f), (h, w))
    # The original's field of view: angle between the rays through the edge midpoints (0, .5) and (1, .5).
    fov_x = math.atan(cx / f) + math.atan((1 - cx) / f)
    ray_top = torch.tensor([(0.5 - cx) / f, -cy / f, 1.0], dtype=F64)
    ray_bottom = torch.tensor([(0.5 - cx) / f, (1 - cy) / f, 1.0], dtype=F64)
    fov_y = torch.arccos(ray_top @ ray_bottom / (ray_top.norm() * ray_bottom.norm())).item()
    u = w / 2 + point[0] / point[2] * w / (2 * math.tan(fov_x / 2))
    v = h / 2 + point[1] / point[2] * h / (2 * math.tan(fov_y / 2))
    assert brightest_pixel(output.color[0, 0, 0]) == (math.floor(v), math.floor(u))
    with_cx = render(point_gaussians([list(point)]), camera(cx, cy, f), (h, w), backend="torch",
                     use_principal_point=True)
    assert brightest_pixel(with_cx.color[0, 0, 0]) == (math.floor(cy * h + f * h * point[1] / point[2]),
                                                      math.floor(cx * w + f * w * point[0] / point[2]))


def test_without_principal_point_the_focal_comes_from_the_edge_fov():
    """cx = 0.5: both settings agree. Off-centre: the original's focal is W / (2 tan(fov_x / 2))."""
    k = torch.tensor([[1.1, 0, 0.5], [0, 0.9, 0.5], [0, 0, 1]], dtype=F64)
    assert torch.allclose(pixel_intrinsics(k, (40, 60), False), pixel_intrinsics(k, (40, 60), True))
    k_off = torch.tensor([[1.0, 0, 0.4], [0, 1.0, 0.5], [0, 0, 1]], dtype=F64)
    fov_x = math.atan(0.4) + math.atan(0.6)
    k_pixel = pixel_intrinsics(k_off, (40, 60), False)
    assert math.isclose(k_pixel[0, 0].item(), 60 / (2 * math.tan(fov_x / 2)), rel_tol=1e-12)
    assert (k_pixel[0, 2].item(), k_pixel[1, 2].item()) == (30.0, 20.0)


def test_near_cull_is_in_scale_invariant_units():
    """z <= 0.2 * near is culled (the original scales the scene by 1/near and culls z <= 0.2)."""
    gaussians = point_gaussians([[0.0, 0.0, 0.5]])
    extrinsics, intrinsics, _, far = camera(0.5, 0.5)
    visible = render(gaussians, (extrinsics, intrinsics, torch.full((1, 1), 2.0, dtype=F64), far), (9, 9), backend="torch")
    culled = render(gaussians, (extrinsics, intrinsics, torch.full((1, 1), 3.0, dtype=F64), far), (9, 9), backend="torch")
    assert visible.color.max() > 0.5 and culled.color.max() == 0


@pytest.mark.parametrize("mode", ["depth", "disparity", "relative_disparity", "log", "log_clamped", "expected_depth"])
def test_depth_modes_accumulate_like_the_original(mode):
    z, near, far, opacity = 4.0, 1.5, 50.0, 0.7
    gaussians = point_gaussians([[0.0, 0.0, z]], opacity=opacity)
    extrinsics, intrinsics, _, _ = camera(0.5, 0.5)
    near_t, far_t = torch.full((1, 1), near, dtype=F64), torch.full((1, 1), far, dtype=F64)
    output = render(gaussians, (extrinsics, intrinsics, near_t, far_t), (9, 9), mode, backend="torch",
                    background_color=(1.0, 1.0, 1.0))
    expected = {
        "depth": opacity * z,  # alpha-weighted, not normalised: the original's visualisation hack
        "disparity": opacity / z,
        "relative_disparity": opacity * (1 - (1 / z - 1 / far) / (1 / near - 1 / far)),
        "log": opacity * math.log(far),  # the original's formula gives log(far) for every Gaussian
        "log_clamped": opacity * math.log(z),
        "expected_depth": z,
    }[mode]
    assert math.isclose(output.depth[0, 0, 4, 4].item(), expected, rel_tol=1e-9)
    assert output.depth[0, 0, 0, 0].item() == 0  # depth is splatted on black whatever the background
    assert math.isclose(output.color[0, 0, 0, 0, 0].item(), 1.0)  # the colour background is used
    no_depth = render(gaussians, (extrinsics, intrinsics, near_t, far_t), (9, 9), backend="torch",
                      background_color=(1.0, 1.0, 1.0))
    assert no_depth.depth is None and torch.allclose(no_depth.color, output.color)


@pytest.mark.parametrize("z", [0.5, 4.0, 80.0])  # before near, between, beyond far
def test_log_depth_equals_the_originals_formula(z):
    """The original's log mode: fake_color = z.minimum(near).maximum(far).log(), splatted with alpha."""
    gaussians = point_gaussians([[0.0, 0.0, z]], opacity=0.5)
    extrinsics, intrinsics, _, _ = camera(0.5, 0.5)
    near, far = torch.full((1, 1), 0.5, dtype=F64), torch.full((1, 1), 10.0, dtype=F64)
    z_t = torch.tensor(z, dtype=F64)
    original = z_t.minimum(near[0, 0]).maximum(far[0, 0]).log().item()
    output = render(gaussians, (extrinsics, intrinsics, near, far), (9, 9), "log", backend="torch")
    assert math.isclose(output.depth[0, 0, 4, 4].item(), 0.5 * original, rel_tol=1e-9)
    clamped = render(gaussians, (extrinsics, intrinsics, near, far), (9, 9), "log_clamped", backend="torch")
    assert math.isclose(clamped.depth[0, 0, 4, 4].item(), 0.5 * math.log(min(max(z, 0.5), 10.0)), rel_tol=1e-9)


def test_backend_resolution():
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert resolve_backend("auto", torch.device("cuda")) == "gsplat"
    assert resolve_backend("auto", torch.device("mps")) == "torch"
    assert resolve_backend("torch", torch.device("cuda")) == "torch"
    assert resolve_backend("cpu", torch.device("cpu")) == "cpu"
    with pytest.raises(ConfigError, match="model.decoder.backend.*set model.decoder.backend=auto"):
        resolve_backend("cpu", torch.device("cuda"))
    with pytest.raises(ConfigError, match="model.decoder.backend.*set model.decoder.backend=auto"):
        resolve_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ConfigError, match="model.decoder.backend"):
        resolve_backend("inria", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the start-up error of a machine without CUDA")
def test_gsplat_backend_without_cuda_fails_at_construction():
    with pytest.raises(ConfigError, match="model.decoder.backend"):
        DecoderSplatting(DecoderSplattingCfg(backend="gsplat"), (0.0, 0.0, 0.0))


def test_module_has_no_state_and_renders_with_its_background():
    decoder = DecoderSplatting(DecoderSplattingCfg(backend="torch"), (0.0, 1.0, 0.0))
    assert decoder.state_dict() == {} and list(decoder.parameters()) == []
    assert torch.equal(decoder.background_color, torch.tensor([0.0, 1.0, 0.0]))
    gaussians = point_gaussians([[0.0, 0.0, 3.0]])
    output = decoder(Gaussians(*(t.float() for t in (gaussians.means, gaussians.covariances, gaussians.harmonics,
                                                     gaussians.opacities))),
                     *(t.float() for t in camera(0.5, 0.5)), (7, 7), depth_mode="depth")
    assert output.color.shape == (1, 1, 3, 7, 7) and output.depth.shape == (1, 1, 7, 7)
    assert torch.equal(output.color[0, 0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]))


def test_bad_shapes_name_the_tensor():
    gaussians = point_gaussians([[0.0, 0.0, 3.0]])
    extrinsics, intrinsics, near, far = camera(0.5, 0.5)
    with pytest.raises(ValueError, match="near has shape"):
        render(gaussians, (extrinsics, intrinsics, near[0], far), (7, 7), backend="torch")
