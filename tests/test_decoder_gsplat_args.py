"""The gsplat call's arguments, checked on CPU: a stand-in for gsplat.rasterization renders them with
our torch rasterizer; the scale-invariant (1/near) scene, viewmats and batch layout must reproduce
the torch backend's image exactly."""

import sys
import types

import torch

from fabric_mvsplat.model.decoder.projection import pixel_intrinsics, project_gaussians
from fabric_mvsplat.model.decoder.rasterize_gsplat import rasterize_gsplat
from fabric_mvsplat.model.decoder.rasterize_torch import rasterize_torch
from fabric_mvsplat.model.decoder.rendering import render, view_dependent_colors
from synthetic_scenes import look_at_cameras, random_gaussians


def fake_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                       eps2d, sh_degree, backgrounds, render_mode, rasterize_mode, covars):
    images = means.shape[0]
    assert quats is None and scales is None and sh_degree is None
    assert (eps2d, render_mode, rasterize_mode) == (0.3, "RGB", "classic")
    assert viewmats.shape == (images, 1, 4, 4) and Ks.shape == (images, 1, 3, 3)
    assert colors.shape[:3] == (images, 1, means.shape[1]) and opacities.shape == means.shape[:2]
    assert covars.shape == (*means.shape, 3) and backgrounds.shape == (images, 1, colors.shape[-1])
    # Each image is its own scene seen by one camera; near = near_plane / 0.2 culls z <= near_plane.
    projected = project_gaussians(means, covars, viewmats[:, 0][:, None], Ks, torch.full((images, 1), near_plane / 0.2),
                                  (height, width))
    image, alpha = rasterize_torch(projected.means2d, projected.conics, opacities, colors[:, 0], projected.depths,
                                   projected.visible, projected.cov2d_diag, (height, width), backgrounds[:, 0])
    return image[:, None], alpha[:, None, ..., None], {}


def test_gsplat_arguments_reproduce_the_torch_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=fake_rasterization))
    generator = torch.Generator().manual_seed(4)
    gaussians = random_gaussians(2, 300, generator, torch.float64)
    extrinsics, intrinsics = look_at_cameras(2, 3, generator, torch.float64)
    near = torch.tensor([[0.5, 1.0, 2.5], [0.8, 0.8, 0.8]], dtype=torch.float64)  # per view: culling differs
    far = torch.full((2, 3), 30.0, dtype=torch.float64)
    shape = (29, 35)
    features = view_dependent_colors(gaussians, extrinsics)
    background = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    image, alpha = rasterize_gsplat(gaussians.means, gaussians.covariances, gaussians.opacities, features,
                                    extrinsics.inverse(), pixel_intrinsics(intrinsics, shape, True), near, shape,
                                    background)
    expected = render(gaussians, extrinsics, intrinsics, near, far, shape, backend="torch",
                      background_color=(0.1, 0.2, 0.3))
    assert image.shape == (2, 3, *shape, 3) and alpha.shape == (2, 3, *shape)
    assert torch.allclose(image.permute(0, 1, 4, 2, 3), expected.color, atol=1e-9)
    assert expected.color.std() > 0.05
