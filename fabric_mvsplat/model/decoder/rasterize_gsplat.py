"""The CUDA backend: gsplat.rasterization with the original's conventions.

Colours come precomputed from our SH code (sh_degree=None), covariances precomputed, classic mode,
0.3 px^2 dilation. To reproduce `scale_invariant=True` every image gets its own copy of the scene
scaled by 1/near (so the z > 0.2 cull is in those units); the B*V images go as gsplat batch
dimensions, one call for everything.

Why the call looks like this (gsplat 1.5.3's own code, tests/test_decoder_gsplat_cpu.py runs it):
- packed=False: in packed mode rasterize_to_pixels asserts backgrounds of shape [D] (one for all
  images), and 1.5.3's packed projection kernel reads every batch row's opacities from the first
  scene (wrong footprints and opacity culling for every other scene). The unpacked kernels index
  each scene's own opacities and take one background per image.
- covariances are symmetrised first: gsplat reads only their upper triangle, so its gradient lands
  on the upper entries alone. Symmetrising makes it the symmetric gradient the torch backend gives.
- float32: the rasterization kernel exists only for float; the result comes back in the input dtype.
Known differences from the original (and our torch backend): gsplat caps alpha at 0.999 instead of
0.99 (identical unless opacity * exp(-power) > 0.99), and culls z < 0.2 rather than z <= 0.2.
"""

import torch
from torch import Tensor

from ...types import Gaussians
from .projection import COVARIANCE_DILATION, NEAR_CULL


def rasterize_gsplat(gaussians: Gaussians, features: Tensor, world_to_camera: Tensor, k_pixel: Tensor, near: Tensor,
                     image_shape: tuple[int, int], background: Tensor) -> tuple[Tensor, Tensor]:
    """gaussians: means [B, G, 3], covariances [B, G, 3, 3], opacities [B, G] (harmonics unused: the colours
    come in `features`); features [B, V, G, D],
    world_to_camera [B, V, 4, 4], k_pixel [B, V, 3, 3], near [B, V], background [D]
    -> features [B, V, H, W, D], alpha [B, V, H, W]."""
    means, covariances, opacities = gaussians.means, gaussians.covariances, gaussians.opacities
    from gsplat import rasterization

    height, width = image_shape
    b, v, g, d = features.shape
    dtype = features.dtype
    means, covariances, opacities, features, world_to_camera, k_pixel, near, background = (
        t.float() for t in (means, covariances, opacities, features, world_to_camera, k_pixel, near, background))
    covariances = 0.5 * (covariances + covariances.transpose(-1, -2))
    scale = (1.0 / near)[..., None, None]  # [B, V, 1, 1]
    means_scaled = (means[:, None] * scale).reshape(b * v, g, 3)
    covariances_scaled = (covariances[:, None] * scale[..., None] ** 2).reshape(b * v, g, 3, 3)
    viewmats = torch.cat([world_to_camera[..., :3, :3], world_to_camera[..., :3, 3:] * scale], dim=-1)
    viewmats = torch.cat([viewmats, world_to_camera[..., 3:, :]], dim=-2).reshape(b * v, 1, 4, 4)
    image, alpha, _ = rasterization(
        means=means_scaled,
        quats=None,
        scales=None,
        opacities=opacities[:, None].expand(b, v, g).reshape(b * v, g),
        colors=features.reshape(b * v, 1, g, d),
        viewmats=viewmats,
        Ks=k_pixel.reshape(b * v, 1, 3, 3),
        width=width,
        height=height,
        near_plane=NEAR_CULL,
        eps2d=COVARIANCE_DILATION,
        sh_degree=None,
        packed=False,
        backgrounds=background.expand(b * v, 1, d).contiguous(),
        render_mode="RGB",
        rasterize_mode="classic",
        covars=covariances_scaled,
    )
    return image.reshape(b, v, height, width, d).to(dtype), alpha.reshape(b, v, height, width).to(dtype)
