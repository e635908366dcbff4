"""Write Gaussians as a standard 3DGS `.ply` (the layout Inria's code and common viewers read).

Per vertex, all float32: x y z, nx ny nz (zeros), f_dc_0..2, f_rest_0..44 (channel-major:
the 15 higher-order R coefficients, then G, then B), opacity (logit), scale_0..2 (log),
rot_0..3 (unit quaternion, w x y z). Colour = SH_C0 * f_dc + 0.5 + higher bands, as ours.

Unlike the original's figure script (DC only, recentred scene, raw opacities), positions
stay in world space and SH are converted to the standard basis (see `sh_convert`).
"""

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from torch import Tensor

from .sh_convert import NUM_COEFFICIENTS, mvsplat_to_standard_sh
from ..types import Gaussians

OPACITY_EPS = 1e-6  # keeps logit finite for opacities of exactly 0 or 1
MIN_VARIANCE = 1e-20  # eigenvalues of a (numerically) singular covariance


def ply_attribute_names() -> list[str]:
    names = ["x", "y", "z", "nx", "ny", "nz"]
    names += [f"f_dc_{i}" for i in range(3)]
    names += [f"f_rest_{i}" for i in range(3 * (NUM_COEFFICIENTS - 1))]
    names += ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    return names


def rotation_to_quaternion(rotation: Tensor) -> Tensor:
    """[..., 3, 3] proper rotations -> [..., 4] unit quaternions (w, x, y, z), w >= 0.

    Picks, per matrix, the formula whose denominator is largest (numerically safe).
    """
    m = rotation
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    q_abs = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    ).clamp_min(0).sqrt()  # [..., 4] = 2|w|, 2|x|, 2|y|, 2|z|
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s10, s02, s21 = m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2]
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, d21, d02, d10], dim=-1),
            torch.stack([d21, q_abs[..., 1] ** 2, s10, s02], dim=-1),
            torch.stack([d02, s10, q_abs[..., 2] ** 2, s21], dim=-1),
            torch.stack([d10, s02, s21, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    ) / (2 * q_abs[..., None].clamp_min(1e-12))  # [..., 4 candidates, 4]
    best = q_abs.argmax(dim=-1)
    quaternion = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    quaternion = torch.nn.functional.normalize(quaternion, dim=-1)
    return torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)


def covariance_to_scale_rotation(covariance: Tensor) -> tuple[Tensor, Tensor]:
    """[..., 3, 3] symmetric PSD -> (scales [..., 3], quaternions wxyz [..., 4]).

    covariance = R diag(scales^2) R^T with R a proper rotation (det +1).
    """
    covariance = covariance.to(torch.float64)
    covariance = 0.5 * (covariance + covariance.transpose(-1, -2))
    variances, rotation = torch.linalg.eigh(covariance)
    # eigenvectors are defined up to sign; flip one axis where they form a reflection
    flip = torch.linalg.det(rotation) < 0
    rotation = rotation.clone()
    rotation[..., :, 2] = torch.where(flip[..., None], -rotation[..., :, 2], rotation[..., :, 2])
    scales = variances.clamp_min(MIN_VARIANCE).sqrt()
    return scales, rotation_to_quaternion(rotation)


def gaussians_to_ply_attributes(gaussians: Gaussians, batch_index: int = 0) -> dict[str, np.ndarray]:
    """One scene of `gaussians` -> {attribute name: [G] float32 array} in 3DGS conventions."""
    batch = gaussians.means.shape[0]
    if not -batch <= batch_index < batch:
        raise IndexError(f"batch_index {batch_index} out of range for Gaussians with batch size {batch}")
    means = gaussians.means[batch_index].detach().cpu()  # [G, 3]
    covariances = gaussians.covariances[batch_index].detach().cpu()  # [G, 3, 3]
    harmonics = gaussians.harmonics[batch_index].detach().cpu()  # [G, 3, d_sh]
    opacities = gaussians.opacities[batch_index].detach().cpu().to(torch.float64)  # [G]

    standard = mvsplat_to_standard_sh(harmonics)  # [G, 3, 16]
    f_dc = standard[..., 0]  # [G, 3]
    f_rest = standard[..., 1:].reshape(standard.shape[0], -1)  # [G, 3*15], R block first
    opacity = opacities.clamp(OPACITY_EPS, 1 - OPACITY_EPS).logit()
    scales, quaternions = covariance_to_scale_rotation(covariances)

    columns = torch.cat(
        [
            means.to(torch.float64),
            torch.zeros_like(means, dtype=torch.float64),
            f_dc.to(torch.float64),
            f_rest.to(torch.float64),
            opacity[:, None],
            scales.log(),
            quaternions,
        ],
        dim=-1,
    ).to(torch.float32)
    names = ply_attribute_names()
    assert columns.shape[1] == len(names)
    return {name: columns[:, i].numpy() for i, name in enumerate(names)}


def export_ply(gaussians: Gaussians, path: str | Path, *, batch_index: int = 0) -> None:
    """Write scene `batch_index` of `gaussians` to `path` as a binary little-endian 3DGS .ply."""
    attributes = gaussians_to_ply_attributes(gaussians, batch_index)
    names = ply_attribute_names()
    vertices = np.empty(len(attributes["x"]), dtype=[(name, "f4") for name in names])
    for name in names:
        vertices[name] = attributes[name]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertices, "vertex")], byte_order="<").write(str(path))


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read the `vertex` element of a .ply: {property name: [N] array}."""
    vertex = PlyData.read(str(path))["vertex"]
    return {name: np.asarray(vertex[name]) for name in vertex.data.dtype.names}
