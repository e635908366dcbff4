"""Cameras and the EWA projection of 3D Gaussians, shared by both backends.

Conventions: extrinsics are OpenCV camera-to-world; intrinsics are normalised
(fx, cx divided by the width, fy, cy by the height). Pixel centres sit at (i + 0.5, j + 0.5),
so a point at pixel coordinate (u, v) = (fx x/z + cx, fy y/z + cy) lands on pixel (floor u, floor v).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from ...camera import field_of_view

COVARIANCE_DILATION = 0.3  # px^2 added to the 2D covariance diagonal, without compensation
NEAR_CULL = 0.2  # Gaussians with camera z <= NEAR_CULL * near are culled (scale_invariant units)
ALPHA_MIN = 1.0 / 255.0  # contributions with alpha below this are skipped
ALPHA_MAX = 0.99  # the original rasterizer's cap on alpha
TRANSMITTANCE_MIN = 1e-4  # a pixel stops before the Gaussian that would take it below this


def pixel_intrinsics(intrinsics: Tensor, image_shape: tuple[int, int], use_principal_point: bool) -> Tensor:
    """Normalised K [..., 3, 3] -> pixel K [..., 3, 3].

    use_principal_point=False reproduces the original renderer, which builds its projection from the
    edge-midpoint field of view only: focal = W / (2 tan(fov_x / 2)), cx = W / 2, cy = H / 2.
    """
    height, width = image_shape
    k = torch.zeros_like(intrinsics)
    k[..., 2, 2] = 1.0
    if use_principal_point:
        k[..., 0, 0] = intrinsics[..., 0, 0] * width
        k[..., 0, 1] = intrinsics[..., 0, 1] * width
        k[..., 0, 2] = intrinsics[..., 0, 2] * width
        k[..., 1, 1] = intrinsics[..., 1, 1] * height
        k[..., 1, 2] = intrinsics[..., 1, 2] * height
        return k
    fov_x, fov_y = field_of_view(intrinsics).unbind(-1)
    k[..., 0, 0] = width / (2 * torch.tan(0.5 * fov_x))
    k[..., 1, 1] = height / (2 * torch.tan(0.5 * fov_y))
    k[..., 0, 2] = width / 2
    k[..., 1, 2] = height / 2
    return k


@dataclass
class ProjectedGaussians:
    """Per image (I = B*V) and Gaussian (N): what the 2D compositing needs.

    means2d [I, N, 2] pixel coordinates; conics [I, N, 3] = (a, b, c) of the inverse 2D covariance
    [[a, b], [b, c]]; depths [I, N] camera z; cov2d_diag [I, N, 2] dilated variances (for the
    footprint); visible [I, N] bool: in front of the near-cull plane.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    cov2d_diag: Tensor
    visible: Tensor


def project_gaussians(means: Tensor, covariances: Tensor, world_to_camera: Tensor, k_pixel: Tensor,
                      near: Tensor, image_shape: tuple[int, int]) -> ProjectedGaussians:
    """means [B, G, 3], covariances [B, G, 3, 3], world_to_camera [B, V, 4, 4], k_pixel [B, V, 3, 3],
    near [B, V] -> ProjectedGaussians with I = B*V images, N = G."""
    height, width = image_shape
    rotation = world_to_camera[..., :3, :3]  # [B, V, 3, 3]
    translation = world_to_camera[..., :3, 3]
    means_cam = torch.einsum("bvij,bgj->bvgi", rotation, means) + translation[:, :, None]
    x, y, z = means_cam.unbind(-1)  # [B, V, G]
    visible = z > NEAR_CULL * near[..., None]
    z_safe = torch.where(visible, z, torch.ones_like(z))  # keeps culled Gaussians finite

    fx, fy = k_pixel[..., 0, 0, None], k_pixel[..., 1, 1, None]  # [B, V, 1]
    cx, cy = k_pixel[..., 0, 2, None], k_pixel[..., 1, 2, None]
    u = fx * x / z_safe + cx
    v = fy * y / z_safe + cy

    # The Jacobian is evaluated at a position clamped to 1.3x the frustum, like both rasterizers.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z_safe * torch.minimum(torch.maximum(x / z_safe, -lim_x_neg), lim_x_pos)
    ty = z_safe * torch.minimum(torch.maximum(y / z_safe, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z_safe)
    jacobian = torch.stack([fx / z_safe, zero, -fx * tx / z_safe**2,
                            zero, fy / z_safe, -fy * ty / z_safe**2], dim=-1).unflatten(-1, (2, 3))
    # Maps a world-space offset straight to pixels: [B, V, G, 2, 3].
    to_pixels = jacobian @ rotation[:, :, None]
    cov2d = (to_pixels @ covariances[:, None]) @ to_pixels.transpose(-1, -2)
    a = cov2d[..., 0, 0] + COVARIANCE_DILATION
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + COVARIANCE_DILATION
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    return ProjectedGaussians(
        means2d=torch.stack([u, v], dim=-1).flatten(0, 1),
        conics=conics.flatten(0, 1),
        depths=z.flatten(0, 1),
        cov2d_diag=torch.stack([a, c], dim=-1).flatten(0, 1),
        visible=visible.flatten(0, 1),
    )
