"""View-dependent colour from SH coefficients, in the convention MVSplat's weights were trained with.

The original renders with a fork of the Inria rasterizer whose SH code evaluates the standard
Inria real-SH basis at the cyclically permuted direction (d_z, d_x, d_y), stops at
degree 3 (degree-4 coefficients get neither a contribution nor a gradient) and, for coefficient
14 only, uses d_z (d_z^2 - d_x^2) in the forward pass while its backward pass differentiates the
consistent d_y (d_z^2 - d_x^2). We reproduce that pair exactly with a straight-through term.
Colour = SH value + 0.5, clamped at 0 from below only.
"""

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
MAX_RENDERED_DEGREE = 3


def inria_sh_basis(x: Tensor, y: Tensor, z: Tensor, num_coefficients: int) -> list[Tensor]:
    """The Inria/3DGS real SH basis functions 0..num_coefficients-1 (at most 16) at direction (x, y, z)."""
    basis = [torch.full_like(x, SH_C0)]
    if num_coefficients > 1:
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if num_coefficients > 4:
        xx, yy, zz = x * x, y * y, z * z
        basis += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy),
                  SH_C2[3] * x * z, SH_C2[4] * (xx - yy)]
    if num_coefficients > 9:
        basis += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
                  SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                  SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return basis


def mvsplat_sh_basis(directions: Tensor, num_coefficients: int) -> Tensor:
    """[..., 3] unit directions -> [..., n] basis of the modified rasterizer's backward pass (the Inria
    basis at (d_z, d_x, d_y)), n <= 16. The forward value of entry 14 differs: see `sh_to_color`."""
    d_x, d_y, d_z = directions.unbind(-1)
    return torch.stack(inria_sh_basis(d_z, d_x, d_y, num_coefficients), dim=-1)


def sh_to_color(harmonics: Tensor, directions: Tensor) -> Tensor:
    """harmonics [..., 3, d_sh], unit view directions [..., 3] (mean - camera centre) -> colour [..., 3] >= 0."""
    d_sh = harmonics.shape[-1]
    degree = int(round(d_sh**0.5)) - 1
    if (degree + 1) ** 2 != d_sh:
        raise ValueError(f"harmonics last dimension {d_sh} is not a square (sh_degree + 1)^2")
    num_rendered = (min(degree, MAX_RENDERED_DEGREE) + 1) ** 2
    basis = mvsplat_sh_basis(directions, num_rendered)  # [..., n]
    value = (harmonics[..., :num_rendered] * basis[..., None, :]).sum(dim=-1)
    if num_rendered > 14:
        # Forward of the coefficient-14 quirk, d_z (d_z^2 - d_x^2); gradients (to the coefficient and
        # the direction) stay those of the consistent term, as in the original's backward pass.
        d_x, _, d_z = directions.unbind(-1)
        quirk = SH_C3[5] * d_z * (d_z * d_z - d_x * d_x)
        value = value + (harmonics[..., 14] * (quirk - basis[..., 14])[..., None]).detach()
    return (value + 0.5).clamp_min(0.0)
