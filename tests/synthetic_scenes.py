"""Reproducible Gaussian scenes and cameras for the decoder's tests and benchmarks."""

import math

import torch
from torch import Tensor

from fabric_mvsplat.types import Gaussians


def random_rotations(count: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """[count, 3, 3] uniformly random rotations (QR of a Gaussian matrix, sign-fixed)."""
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[torch.linalg.det(q) < 0, :, 0] *= -1
    return q.to(dtype)


def look_at_cameras(batch: int, views: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                    jitter: float = 0.3, focal: float = 1.0) -> tuple[Tensor, Tensor]:
    """Cameras near the origin looking down +z, slightly rotated and translated:
    c2w extrinsics [B, V, 4, 4] and normalised intrinsics [B, V, 3, 3] with an off-centre principal point."""
    extrinsics = torch.eye(4, dtype=torch.float64).repeat(batch, views, 1, 1)
    angles = (torch.rand(batch, views, 3, generator=generator, dtype=torch.float64) - 0.5) * jitter
    for axis, (i, j) in enumerate(((1, 2), (0, 2), (0, 1))):
        rotation = torch.eye(3, dtype=torch.float64).repeat(batch, views, 1, 1)
        c, s = angles[..., axis].cos(), angles[..., axis].sin()
        rotation[..., i, i], rotation[..., j, j], rotation[..., i, j], rotation[..., j, i] = c, c, -s, s
        extrinsics[..., :3, :3] = rotation @ extrinsics[..., :3, :3]
    extrinsics[..., :3, 3] = (torch.rand(batch, views, 3, generator=generator, dtype=torch.float64) - 0.5) * jitter
    intrinsics = torch.eye(3, dtype=torch.float64).repeat(batch, views, 1, 1)
    intrinsics[..., 0, 0] = focal * (1 + 0.1 * torch.rand(batch, views, generator=generator, dtype=torch.float64))
    intrinsics[..., 1, 1] = focal * (1 + 0.1 * torch.rand(batch, views, generator=generator, dtype=torch.float64))
    intrinsics[..., :2, 2] = 0.5 + 0.06 * (torch.rand(batch, views, 2, generator=generator, dtype=torch.float64) - 0.5)
    return extrinsics.to(dtype), intrinsics.to(dtype)


def random_gaussians(batch: int, count: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                     d_sh: int = 25, scale_range: tuple[float, float] = (0.02, 0.25),
                     opacity_range: tuple[float, float] = (0.05, 0.95)) -> Gaussians:
    """Gaussians in a box in front of (and partly behind / beside) cameras at the origin looking down +z."""
    means = torch.rand(batch, count, 3, generator=generator, dtype=dtype)
    means = means * torch.tensor([3.0, 3.0, 4.5], dtype=dtype) - torch.tensor([1.5, 1.5, 0.5], dtype=dtype)
    means[..., :2] *= means[..., 2:].abs().clamp_min(0.5)  # widen with depth: some land off-screen
    log_scales = torch.empty(batch, count, 3, dtype=dtype).uniform_(*map(math.log, scale_range), generator=generator)
    rotations = random_rotations(batch * count, generator, dtype).view(batch, count, 3, 3)
    covariances = rotations @ torch.diag_embed(torch.exp(2 * log_scales)) @ rotations.transpose(-1, -2)
    harmonics = 0.3 * torch.randn(batch, count, 3, d_sh, generator=generator, dtype=dtype)
    opacities = torch.empty(batch, count, dtype=dtype).uniform_(*opacity_range, generator=generator)
    return Gaussians(means, covariances, harmonics, opacities)


def pixel_aligned_scene(batch: int, context_views: int, image_shape: tuple[int, int], generator: torch.Generator,
                        dtype: torch.dtype = torch.float32) -> Gaussians:
    """An MVSplat-shaped scene: one Gaussian per context pixel on its ray, 2-6 units away, with the
    encoder's pixel-relative scales (0.1 (1/fx + 1/fy) depth s, s in [0.5, 15], centred at 7.75),
    sigmoid opacities and masked degree-4 SH. G = batch x context_views x H x W."""
    height, width = image_shape
    extrinsics, intrinsics = look_at_cameras(batch, context_views, generator, torch.float64)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    uv1 = torch.stack([(xs + 0.5) / width, (ys + 0.5) / height, torch.ones_like(xs, dtype=torch.float64)], -1)
    rays = torch.einsum("bvij,hwj->bvhwi", intrinsics.inverse(), uv1.double())
    rays = torch.einsum("bvij,bvhwj->bvhwi", extrinsics[..., :3, :3], rays / rays.norm(dim=-1, keepdim=True))
    depth = 2 + 4 * torch.rand(batch, context_views, height, width, 1, generator=generator, dtype=torch.float64)
    means = extrinsics[..., None, None, :3, 3] + rays * depth
    pixel_size = 0.1 * (1 / (intrinsics[..., 0, 0] * width) + 1 / (intrinsics[..., 1, 1] * height))
    multiplier = 0.5 + 14.5 * torch.sigmoid(torch.randn(batch, context_views, height, width, 3, generator=generator,
                                                        dtype=torch.float64))
    scales = pixel_size[..., None, None, None] * depth * multiplier
    count = context_views * height * width
    rotations = random_rotations(batch * count, generator, torch.float64).view(batch, count, 3, 3)
    covariances = rotations @ torch.diag_embed(scales.reshape(batch, count, 3) ** 2) @ rotations.transpose(-1, -2)
    sh_mask = torch.tensor([0.1 * 0.25**degree for degree in range(5) for _ in range(2 * degree + 1)],
                           dtype=torch.float64)
    sh_mask[0] = 1.0
    harmonics = torch.randn(batch, count, 3, 25, generator=generator, dtype=torch.float64) * sh_mask
    opacities = torch.sigmoid(torch.randn(batch, count, generator=generator, dtype=torch.float64))
    gaussians = Gaussians(means.reshape(batch, count, 3), covariances, harmonics, opacities)
    return Gaussians(*(t.to(dtype) for t in (gaussians.means, gaussians.covariances, gaussians.harmonics,
                                             gaussians.opacities)))
