"""Rotate real spherical-harmonic coefficients with Wigner-D matrices (no e3nn dependency).

The original rotates SH with e3nn 0.5.1: Y-X-Y Euler angles from the rotation matrix, then
D^l = exp(alpha X_y) exp(beta X_x) exp(gamma X_y) with the real so(3) generators X of degree l.
We rebuild the same generators from the su(2) ladder operators and a real<->complex change of
basis, and evaluate the same matrix exponentials in the input dtype, so the float32 rounding
(including beta collapsing to 0 for tilts below ~2.5e-4 rad) follows the original.
"""

import math
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=None)
def _real_so3_generators(degree: int) -> Tensor:
    """[3, 2l+1, 2l+1] generators (x, y, z in e3nn's axis convention) of the real irrep.

    Built in complex64 like e3nn under the float32 default dtype, so the rounding matches.
    """
    l = degree
    m = torch.arange(-l, l, dtype=torch.float64)
    raising = torch.diag(-torch.sqrt(l * (l + 1) - m * (m + 1)), diagonal=-1)
    m = torch.arange(-l + 1, l + 1, dtype=torch.float64)
    lowering = torch.diag(torch.sqrt(l * (l + 1) - m * (m - 1)), diagonal=1)
    m = torch.arange(-l, l + 1, dtype=torch.float64)
    raising, lowering, m = raising.float(), lowering.float(), m.float()
    su2 = torch.stack([
        (0.5 * (raising + lowering)).to(torch.complex64),
        torch.diag(1j * m.to(torch.complex64)),
        -0.5j * (raising - lowering).to(torch.complex64),
    ])
    # Change of basis from real to complex spherical harmonics (the (-i)^l phase keeps it real).
    q = torch.zeros((2 * l + 1, 2 * l + 1), dtype=torch.complex128)
    for mm in range(-l, 0):
        q[l + mm, l - mm] = 1 / math.sqrt(2)
        q[l + mm, l + mm] = -1j / math.sqrt(2)
    q[l, l] = 1
    for mm in range(1, l + 1):
        q[l + mm, l + mm] = (-1) ** mm / math.sqrt(2)
        q[l + mm, l - mm] = 1j * (-1) ** mm / math.sqrt(2)
    q = ((-1j) ** l * q).to(torch.complex64)
    generators = q.conj().T @ su2 @ q
    assert generators.imag.abs().max() < 1e-5
    return generators.real


def _axis_rotation(angle: Tensor, axis: str) -> Tensor:
    c, s, o, z = angle.cos(), angle.sin(), torch.ones_like(angle), torch.zeros_like(angle)
    rows = {
        "x": ((o, z, z), (z, c, -s), (z, s, c)),
        "y": ((c, z, s), (z, o, z), (-s, z, c)),
    }[axis]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def matrix_to_angles(rotations: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Y-X-Y Euler angles (alpha, beta, gamma) of rotation matrices [..., 3, 3]."""
    y_image = rotations @ rotations.new_tensor([0.0, 1.0, 0.0])
    y_image = torch.nn.functional.normalize(y_image, p=2, dim=-1).clamp(-1, 1)
    beta = torch.acos(y_image[..., 1])
    alpha = torch.atan2(y_image[..., 0], y_image[..., 2])
    without_ab = (_axis_rotation(alpha, "y") @ _axis_rotation(beta, "x")).transpose(-1, -2) @ rotations
    gamma = torch.atan2(without_ab[..., 0, 2], without_ab[..., 0, 0])
    return alpha, beta, gamma


def wigner_d(degree: int, alpha: Tensor, beta: Tensor, gamma: Tensor) -> Tensor:
    """Real Wigner-D matrices [..., 2l+1, 2l+1] for Y-X-Y Euler angles."""
    generators = _real_so3_generators(degree).to(device=alpha.device, dtype=alpha.dtype)
    alpha, beta, gamma = (a[..., None, None] % (2 * math.pi) for a in torch.broadcast_tensors(alpha, beta, gamma))
    return (torch.matrix_exp(alpha * generators[1]) @ torch.matrix_exp(beta * generators[0])
            @ torch.matrix_exp(gamma * generators[1]))


def rotate_sh(sh: Tensor, rotations: Tensor) -> Tensor:
    """Rotate SH coefficients sh [..., d_sh] (d_sh = (deg+1)^2) by rotations [..., 3, 3] (broadcast)."""
    num_degrees = math.isqrt(sh.shape[-1])
    # Angles and matrix exponentials need at least float32: bf16 autocast would turn them into NaNs.
    with torch.autocast(device_type=rotations.device.type, enabled=False):
        angles = matrix_to_angles(rotations.float() if rotations.dtype in (torch.float16, torch.bfloat16) else rotations)
        wigner = [wigner_d(degree, *angles) for degree in range(num_degrees)]
    rotated = []
    for degree in range(num_degrees):
        d = wigner[degree].to(sh.dtype)
        band = sh[..., degree**2:(degree + 1) ** 2]
        # einsum, not `d @ band[..., None]`: matmul broadcasting materialises one copy of the
        # (per-view) Wigner matrix per Gaussian and colour channel (~130 MB at 256x256, degree 4),
        # while einsum folds the broadcast dimensions into one batched product per view.
        rotated.append(torch.einsum("...ij,...j->...i", d, band))
    return torch.cat(rotated, dim=-1)
