"""Spherical-harmonics conventions: MVSplat's permuted basis -> the standard 3DGS basis.

MVSplat's rasterizer evaluates the standard Inria/3DGS real-SH basis at the cyclically
permuted direction P d = (d_z, d_x, d_y). Viewers and gsplat evaluate it at d.
Because P is a rotation, each band l mixes only within itself: there is a fixed
(2l+1)x(2l+1) matrix M_l with Y_l(P d) . c = Y_l(d) . (M_l c) for every direction d. We
solve for M_l numerically (exact up to float64 round-off) from the basis below.

Ignored on purpose: the original CUDA forward pass uses z(z^2 - x^2) instead of
y(z^2 - x^2) for coefficient 14 (a quirk of one degree-3 term, damped by sh_mask), so
coefficient 14 renders slightly differently after conversion. Degree-4 coefficients are
never rendered by the original (its SH code stops at degree 3) and are dropped.
"""

from functools import lru_cache

import torch
from torch import Tensor

from .decoder.sh import inria_sh_basis, mvsplat_sh_basis

MAX_DEGREE = 3
NUM_COEFFICIENTS = (MAX_DEGREE + 1) ** 2  # 16


def sh_basis(directions: Tensor) -> Tensor:
    """Inria/3DGS real SH basis, degrees 0..3: [..., 3] unit directions -> [..., 16]."""
    return torch.stack(inria_sh_basis(*directions.unbind(-1), NUM_COEFFICIENTS), dim=-1)


@lru_cache(maxsize=1)
def _permutation_to_standard_matrix() -> Tensor:
    """[16, 16] float64 block-diagonal M with sh_basis(P d) @ c == sh_basis(d) @ (M @ c)."""
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(512, 3, generator=generator, dtype=torch.float64)
    directions = torch.nn.functional.normalize(directions, dim=-1)
    standard = sh_basis(directions)  # [N, 16]
    permuted = mvsplat_sh_basis(directions, NUM_COEFFICIENTS)  # [N, 16], the basis at (d_z, d_x, d_y)
    matrix = torch.zeros(NUM_COEFFICIENTS, NUM_COEFFICIENTS, dtype=torch.float64)
    for degree in range(MAX_DEGREE + 1):
        band = slice(degree**2, (degree + 1) ** 2)
        # standard[:, band] @ M_l = permuted[:, band]: least squares, exact since P is a rotation
        matrix[band, band] = torch.linalg.lstsq(standard[:, band], permuted[:, band]).solution
    return matrix


def mvsplat_to_standard_sh(harmonics: Tensor) -> Tensor:
    """[..., d_sh] coefficients in MVSplat's convention -> [..., 16] in the standard 3DGS one.

    d_sh may be 1, 4, 9, 16 or 25; missing bands are zero-filled, degree 4 is dropped.
    """
    d_sh = harmonics.shape[-1]
    if d_sh not in (1, 4, 9, 16, 25):
        raise ValueError(f"harmonics last dimension must be (degree+1)^2 for degree <= 4, got {d_sh}")
    used = min(d_sh, NUM_COEFFICIENTS)
    padded = harmonics.new_zeros(*harmonics.shape[:-1], NUM_COEFFICIENTS, dtype=torch.float64)
    padded[..., :used] = harmonics[..., :used].to(torch.float64)
    matrix = _permutation_to_standard_matrix().to(harmonics.device)
    return (padded @ matrix.T).to(harmonics.dtype)
