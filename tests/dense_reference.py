"""A dense rasterizer: every pixel against every Gaussian, written for obviousness, not speed.

It is the ground truth the tiled torch rasterizer is tested and benchmarked against. Projection,
alpha and compositing are written out again here (one image at a time, matrix inverse for the
conic, cumprod for transmittance); only the camera intrinsics and the SH colour come from the
decoder, and those have their own tests. Pixels go through in checkpointed chunks so that
the backward pass of a 64x64 scene fits in memory.
"""

from typing import Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from fabric_mvsplat.types import Gaussians
from fabric_mvsplat.model.decoder.projection import ALPHA_MAX, ALPHA_MIN, COVARIANCE_DILATION, NEAR_CULL, TRANSMITTANCE_MIN, pixel_intrinsics
from fabric_mvsplat.model.decoder.rendering import DecoderOutput, DepthMode, depth_feature, view_dependent_colors


def project_one_image(means: Tensor, covariances: Tensor, world_to_camera: Tensor, k: Tensor,
                      image_shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """[G, 3], [G, 3, 3], [4, 4], pixel K [3, 3] -> means2d [G, 2], inverse 2D covariance [G, 2, 2], z [G]."""
    height, width = image_shape
    points = means @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    x, y, z = points.unbind(-1)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    # The EWA Jacobian at the point clamped to 1.3x the frustum (both CUDA rasterizers do this).
    x_clamped = z * (x / z).clamp(-(cx / fx + 0.15 * width / fx), (width - cx) / fx + 0.15 * width / fx)
    y_clamped = z * (y / z).clamp(-(cy / fy + 0.15 * height / fy), (height - cy) / fy + 0.15 * height / fy)
    jacobian = torch.zeros(means.shape[0], 2, 3, dtype=means.dtype, device=means.device)
    jacobian[:, 0, 0] = fx / z
    jacobian[:, 0, 2] = -fx * x_clamped / z**2
    jacobian[:, 1, 1] = fy / z
    jacobian[:, 1, 2] = -fy * y_clamped / z**2
    camera_covariances = world_to_camera[:3, :3] @ covariances @ world_to_camera[:3, :3].T
    cov2d = jacobian @ camera_covariances @ jacobian.transpose(1, 2)
    cov2d = cov2d + COVARIANCE_DILATION * torch.eye(2, dtype=means.dtype, device=means.device)
    return means2d, torch.linalg.inv(cov2d), z


def composite_rows(pixels: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor,
                   features: Tensor) -> tuple[Tensor, Tensor]:
    """pixels [P, 2] against depth-sorted Gaussians -> features [P, D], transmittance [P]."""
    dx = pixels[:, None, 0] - means2d[None, :, 0]  # [P, G]
    dy = pixels[:, None, 1] - means2d[None, :, 1]
    # The full quadratic form d^T conic d / 2, both off-diagonal entries included.
    power = 0.5 * (conics[:, 0, 0] * dx * dx + conics[:, 1, 1] * dy * dy + (conics[:, 0, 1] + conics[:, 1, 0]) * dx * dy)
    alpha = (opacities[None] * torch.exp(-power)).clamp_max(ALPHA_MAX)
    alpha = torch.where((alpha >= ALPHA_MIN) & (power >= 0), alpha, torch.zeros_like(alpha))
    transmittance_after = torch.cumprod(1 - alpha, dim=1)
    transmittance_before = torch.cat([torch.ones_like(alpha[:, :1]), transmittance_after[:, :-1]], dim=1)
    included = transmittance_after >= TRANSMITTANCE_MIN  # once false, false for every Gaussian behind
    weights = alpha * transmittance_before * included
    final_transmittance = torch.prod(1 - alpha * included, dim=1)
    return weights @ features, final_transmittance


def render_dense(gaussians: Gaussians, extrinsics: Tensor, intrinsics: Tensor, near: Tensor, far: Tensor,
                 image_shape: tuple[int, int], depth_mode: DepthMode | None = None, *,
                 use_principal_point: bool = False, background_color: Sequence[float] = (0.0, 0.0, 0.0),
                 pairs_per_chunk: int = 1 << 20) -> DecoderOutput:
    """Same contract as `render`, one image and one chunk of pixels at a time."""
    height, width = image_shape
    b, v = extrinsics.shape[:2]
    k_pixel = pixel_intrinsics(intrinsics, image_shape, use_principal_point)
    world_to_camera = extrinsics.inverse()
    features = view_dependent_colors(gaussians, extrinsics)
    background = torch.tensor(list(background_color), dtype=features.dtype, device=features.device)
    if depth_mode is not None:
        z = torch.einsum("bvj,bgj->bvg", world_to_camera[..., 2, :3], gaussians.means) + world_to_camera[..., 2, 3, None]
        features = torch.cat([features, depth_feature(z, near, far, depth_mode)[..., None]], dim=-1)
        background = torch.cat([background, background.new_zeros(1)])

    ys, xs = torch.meshgrid(torch.arange(height, device=features.device), torch.arange(width, device=features.device),
                            indexing="ij")
    pixels = torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(features.dtype) + 0.5
    images, alphas = [], []
    for i in range(b):
        for j in range(v):
            means2d, conics, z = project_one_image(gaussians.means[i], gaussians.covariances[i],
                                                   world_to_camera[i, j], k_pixel[i, j], image_shape)
            keep = z > NEAR_CULL * near[i, j]
            order = torch.argsort(torch.where(keep, z, torch.full_like(z, torch.inf)), stable=True)
            order = order[keep[order]]
            args = (means2d[order], conics[order], gaussians.opacities[i, order], features[i, j, order])
            rows, step = [], max(1, pairs_per_chunk // max(1, order.shape[0]))
            for start in range(0, height * width, step):
                chunk = pixels[start:start + step]
                if torch.is_grad_enabled():
                    rows.append(checkpoint(composite_rows, chunk, *args, use_reentrant=False))
                else:
                    rows.append(composite_rows(chunk, *args))
            accumulated = torch.cat([r[0] for r in rows])
            transmittance = torch.cat([r[1] for r in rows])
            images.append((accumulated + transmittance[:, None] * background).view(height, width, -1))
            alphas.append((1 - transmittance).view(height, width))
    image = torch.stack(images).view(b, v, height, width, -1)
    alpha = torch.stack(alphas).view(b, v, height, width)
    depth = None
    if depth_mode is not None:
        depth = image[..., 3]
        if depth_mode == "expected_depth":
            depth = depth / alpha.clamp_min(1e-10)
    return DecoderOutput(color=image[..., :3].permute(0, 1, 4, 2, 3), depth=depth, alpha=alpha)
