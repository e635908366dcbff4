"""Camera paths for the validation and test videos, in the original's parametrisation.

Interpolation pivots about the point both cameras look at (the least-squares intersection of their
look rays, or the midpoint of their centres when the rays are parallel). Each camera becomes five
numbers in a frame whose Y axis is normal to the plane of the two look vectors: its offset to the
pivot (3) and two Euler angles (yaw about Y, roll about the look axis). Offsets are lerped, angles
lerped along the shorter way round the circle. Everything runs in float64.
"""

import math

import torch
from torch import Tensor

PARALLEL_EPS = 1e-4


def smooth_t(num_frames: int) -> Tensor:
    """[num_frames] times in [0, 1] that ease in and out: (cos(pi (t + 1)) + 1) / 2 of a linspace."""
    t = torch.linspace(0, 1, num_frames)
    return (torch.cos(math.pi * (t + 1)) + 1) / 2


def interpolate_intrinsics(initial: Tensor, final: Tensor, t: Tensor) -> Tensor:
    """[..., 3, 3] x2, t [T] -> [..., T, 3, 3] linear interpolation."""
    t = t.to(initial.dtype)[:, None, None]
    return initial[..., None, :, :] + (final - initial)[..., None, :, :] * t


def _frame(y_axis: Tensor, z_axis: Tensor) -> Tensor:
    """Right-handed frame [..., 3, 3] with columns (y x z, y, z) from perpendicular unit y and z."""
    y_axis, z_axis = torch.broadcast_tensors(y_axis, z_axis)
    return torch.stack([torch.linalg.cross(y_axis, z_axis), y_axis, z_axis], dim=-1)


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _pivot_frame(look_a: Tensor, look_b: Tensor) -> Tensor:
    """Frame whose Y is normal to the plane of the two look vectors and whose Z is look_a.
    For (anti)parallel looks any perpendicular Y does: try +z, then +y as the second vector."""
    other = look_b.clone()
    for fallback in ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)):
        parallel = ((look_a * other).sum(-1).abs() - 1).abs() < PARALLEL_EPS
        other[parallel] = torch.tensor(fallback, dtype=other.dtype, device=other.device)
    return _frame(_normalize(torch.linalg.cross(look_a, other)), look_a)


def _pivot_point(origin_a: Tensor, look_a: Tensor, origin_b: Tensor, look_b: Tensor) -> Tensor:
    """Least-squares closest point to both look rays; the centres' midpoint where they are parallel."""
    pivot = 0.5 * (origin_a + origin_b)
    parallel = ((look_a * look_b).sum(-1).abs() - 1).abs() < PARALLEL_EPS
    if (~parallel).any():
        eye = torch.eye(3, dtype=origin_a.dtype, device=origin_a.device)
        # Sum over rays of (I - d d^T) (p - o) = 0.
        projectors = [eye - d[~parallel, :, None] * d[~parallel, None, :] for d in (look_a, look_b)]
        lhs = projectors[0] + projectors[1]
        rhs = projectors[0] @ origin_a[~parallel, :, None] + projectors[1] @ origin_b[~parallel, :, None]
        pivot[~parallel] = torch.linalg.solve(lhs, rhs)[..., 0]
    return pivot


def _rotation_y(angle: Tensor) -> Tensor:
    c, s, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, zero, s, zero, one, zero, -s, zero, c], dim=-1).unflatten(-1, (3, 3))


def _rotation_z(angle: Tensor) -> Tensor:
    c, s, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).unflatten(-1, (3, 3))


def _to_pivot_parameters(extrinsics: Tensor, pivot_frame: Tensor, pivot: Tensor) -> Tensor:
    """c2w [..., 4, 4] -> [..., 5]: offset to the pivot in (axis x look, axis, look) coordinates,
    then yaw and roll of R_rel = pivot_frame^T R written as R_y(yaw) R_x(pitch) R_z(roll).
    The pitch is 0 for both endpoints by construction (their looks lie in the pivot plane)."""
    rotation = extrinsics[..., :3, :3]
    offset_frame = _frame(pivot_frame[..., :, 1], rotation[..., :, 2])
    offset = (offset_frame.transpose(-1, -2) @ (pivot - extrinsics[..., :3, 3])[..., None])[..., 0]
    relative = pivot_frame.transpose(-1, -2) @ rotation
    yaw = torch.atan2(relative[..., 0, 2], relative[..., 2, 2])
    roll = torch.atan2(relative[..., 1, 0], relative[..., 1, 1])
    return torch.cat([offset, yaw[..., None], roll[..., None]], dim=-1)


def _from_pivot_parameters(parameters: Tensor, pivot_frame: Tensor, pivot: Tensor) -> Tensor:
    offset, yaw, roll = parameters[..., :3], parameters[..., 3], parameters[..., 4]
    rotation = pivot_frame @ _rotation_y(yaw) @ _rotation_z(roll)
    offset_frame = _frame(pivot_frame[..., :, 1], rotation[..., :, 2])
    origin = pivot - (offset_frame @ offset[..., None])[..., 0]
    extrinsics = torch.zeros((*parameters.shape[:-1], 4, 4), dtype=parameters.dtype, device=parameters.device)
    extrinsics[..., :3, :3] = rotation
    extrinsics[..., :3, 3] = origin
    extrinsics[..., 3, 3] = 1
    return extrinsics


def _lerp_angle(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Interpolate angles along the shorter arc (start shifted by a multiple of 2 pi towards b)."""
    tau = 2 * math.pi
    a, b = a % tau, b % tau
    a = a + tau * torch.round((b - a) / tau)
    return a + (b - a) * t


@torch.no_grad()
def interpolate_extrinsics(initial: Tensor, final: Tensor, t: Tensor) -> Tensor:
    """c2w [..., 4, 4] x2, t [T] -> [..., T, 4, 4]; hits `initial` at t = 0 and `final` at t = 1."""
    dtype = initial.dtype
    initial, final, t = initial.double(), final.double(), t.double()
    look_a, look_b = initial[..., :3, 2], final[..., :3, 2]
    pivot = _pivot_point(initial[..., :3, 3], look_a, final[..., :3, 3], look_b)
    pivot_frame = _pivot_frame(look_a, look_b)
    start = _to_pivot_parameters(initial, pivot_frame, pivot)[..., None, :]  # [..., 1, 5]
    end = _to_pivot_parameters(final, pivot_frame, pivot)[..., None, :]
    t = t[:, None]
    offsets = start[..., :3] + (end[..., :3] - start[..., :3]) * t
    angles = _lerp_angle(start[..., 3:], end[..., 3:], t)
    parameters = torch.cat([offsets, angles], dim=-1)  # [..., T, 5]
    return _from_pivot_parameters(parameters, pivot_frame[..., None, :, :], pivot[..., None, :]).to(dtype)


@torch.no_grad()
def generate_wobble(extrinsics: Tensor, radius: Tensor, t: Tensor, num_rotations: int = 1,
                    scale_radius_with_t: bool = True) -> Tensor:
    """c2w [..., 4, 4], radius [...], t [T] -> [..., T, 4, 4]: the camera circles in its own image
    plane (x right, y down), starting straight up, radius growing with t unless told otherwise."""
    radius = torch.as_tensor(radius, dtype=extrinsics.dtype, device=extrinsics.device)[..., None]
    t = t.to(extrinsics.dtype)
    if scale_radius_with_t:
        radius = radius * t
    angle = 2 * math.pi * num_rotations * t
    shift = torch.eye(4, dtype=extrinsics.dtype, device=extrinsics.device)
    shift = shift.expand(*radius.shape, 4, 4).clone()
    shift[..., 0, 3] = torch.sin(angle) * radius
    shift[..., 1, 3] = -torch.cos(angle) * radius
    return extrinsics[..., None, :, :] @ shift
