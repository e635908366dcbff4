"""Raw per-pixel channels -> world-space Gaussians (means, covariances, SH, opacities).

Batch dims follow the encoder: `b v r srf spp` (views, rays = pixels, surfaces, Gaussians per pixel).
"""

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ..decoder.sh import SH_C0
from .config import GaussianAdapterCfg
from .sh_rotation import rotate_sh


@dataclass
class AdaptedGaussians:
    means: Tensor        # [..., 3] world
    covariances: Tensor  # [..., 3, 3] world
    harmonics: Tensor    # [..., 3, d_sh] world-rotated SH
    opacities: Tensor    # [...]
    scales: Tensor       # [..., 3] camera frame (PLY export / visualisation only)
    rotations: Tensor    # [..., 4] normalised xyzw quaternion, camera frame


def sample_image_grid(shape_hw: tuple[int, int], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Pixel centres xy [h, w, 2] in (0, 1) (x = (col + 0.5) / w) and integer indices ij [h, w, 2]."""
    h, w = shape_hw
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    ij = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)
    y = (rows + 0.5) / h
    x = (cols + 0.5) / w
    xy = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)
    return xy, ij


def quaternion_to_matrix(quaternions_xyzw: Tensor, eps: float = 1e-8) -> Tensor:
    """[..., 4] xyzw (real part last, scipy order) -> [..., 3, 3]."""
    i, j, k, r = torch.unbind(quaternions_xyzw, dim=-1)
    two_s = 2 / ((quaternions_xyzw * quaternions_xyzw).sum(dim=-1) + eps)
    entries = (
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    )
    return rearrange(torch.stack(entries, dim=-1), "... (i j) -> ... i j", i=3, j=3)


def build_covariance(scales: Tensor, rotations_xyzw: Tensor) -> Tensor:
    """R S S^T R^T from scales [..., 3] and xyzw quaternions [..., 4] -> [..., 3, 3]."""
    scale = scales.diag_embed()
    rotation = quaternion_to_matrix(rotations_xyzw)
    return rotation @ scale @ scale.transpose(-1, -2) @ rotation.transpose(-1, -2)


def get_world_rays(coordinates: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Unit ray directions and origins in world space for normalised pixel coordinates [..., 2]."""
    homogeneous = torch.cat([coordinates, torch.ones_like(coordinates[..., :1])], dim=-1)
    directions = (intrinsics.inverse() @ homogeneous.unsqueeze(-1)).squeeze(-1)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    directions = (extrinsics[..., :3, :3] @ directions.unsqueeze(-1)).squeeze(-1)
    origins = extrinsics[..., :3, 3].broadcast_to(directions.shape)
    return origins, directions


class GaussianAdapter(nn.Module):
    def __init__(self, cfg: GaussianAdapterCfg) -> None:
        super().__init__()
        self.cfg = cfg
        # Bias initial SH towards a large DC term; rebuilt here, so never saved (non-persistent).
        sh_mask = torch.ones(self.d_sh, dtype=torch.float32)
        for degree in range(1, cfg.sh_degree + 1):
            sh_mask[degree**2:(degree + 1) ** 2] = 0.1 * 0.25**degree
        self.register_buffer("sh_mask", sh_mask, persistent=False)

    @property
    def d_sh(self) -> int:
        return (self.cfg.sh_degree + 1) ** 2

    @property
    def d_in(self) -> int:
        """Raw channels consumed per Gaussian: 3 scale + 4 quaternion + 3 * d_sh colour."""
        return 7 + 3 * self.d_sh

    def scale_multiplier(self, intrinsics: Tensor, pixel_size: Tensor, multiplier: float = 0.1) -> Tensor:
        """0.1 * (1/fx_px + 1/fy_px): makes scales pixel-relative. intrinsics [..., 3, 3] -> [...]."""
        xy = (intrinsics[..., :2, :2].inverse() @ pixel_size.unsqueeze(-1)).squeeze(-1)
        return (multiplier * xy).sum(dim=-1)

    def forward(
        self,
        extrinsics: Tensor,     # [b v 1 1 1 4 4] c2w
        intrinsics: Tensor,     # [b v 1 1 1 3 3] normalised
        coordinates: Tensor,    # [b v r srf 1 2] in [0, 1]
        depths: Tensor,         # [b v r srf spp] distance along the ray
        opacities: Tensor,      # [b v r srf spp]
        raw_gaussians: Tensor,  # [b v r srf 1 d_in]
        image_shape: tuple[int, int],
        pixel_colours: Tensor | None = None,  # [b v r srf 1 3] in [0, 1]; read when cfg.colour_from_pixel
    ) -> AdaptedGaussians:
        scales, rotations, sh = raw_gaussians.split((3, 4, 3 * self.d_sh), dim=-1)

        scale_min, scale_max = self.cfg.gaussian_scale_min, self.cfg.gaussian_scale_max
        scales = scale_min + (scale_max - scale_min) * scales.sigmoid()
        h, w = image_shape
        pixel_size = 1 / torch.tensor((w, h), dtype=torch.float32, device=extrinsics.device)
        multiplier = self.scale_multiplier(intrinsics, pixel_size)
        scales = scales * depths[..., None] * multiplier[..., None]

        rotations = rotations / (rotations.norm(dim=-1, keepdim=True) + 1e-8)

        sh = rearrange(sh, "... (xyz d_sh) -> ... xyz d_sh", xyz=3)
        sh = sh.broadcast_to((*opacities.shape, 3, self.d_sh)) * self.sh_mask
        if self.cfg.colour_from_pixel:  # rendered colour = SH_C0 * DC + 0.5 (+ higher bands)
            if pixel_colours is None:
                raise ValueError("colour_from_pixel is set: pass the pixel colours the DC terms start from")
            dc_from_pixel = (pixel_colours.broadcast_to((*opacities.shape, 3)) - 0.5) / SH_C0
            sh = torch.cat((sh[..., :1] + dc_from_pixel[..., None], sh[..., 1:]), dim=-1)

        c2w_rotations = extrinsics[..., :3, :3]
        covariances = build_covariance(scales, rotations)
        covariances = c2w_rotations @ covariances @ c2w_rotations.transpose(-1, -2)

        origins, directions = get_world_rays(coordinates, extrinsics, intrinsics)
        means = origins + directions * depths[..., None]

        return AdaptedGaussians(
            means=means,
            covariances=covariances,
            harmonics=rotate_sh(sh, c2w_rotations[..., None, :, :]),
            opacities=opacities,
            scales=scales,
            rotations=rotations.broadcast_to((*scales.shape[:-1], 4)),
        )
