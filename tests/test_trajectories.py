"""Video camera paths: interpolation hits both poses, stays rigid, pivots; wobble circles."""

import math

import torch

from synthetic_scenes import look_at_cameras
from fabric_mvsplat.visualization.trajectories import (
    generate_wobble,
    interpolate_extrinsics,
    interpolate_intrinsics,
    smooth_t,
)


def test_smooth_t_eases_from_0_to_1():
    t = smooth_t(30)
    assert t.shape == (30,) and t[0] == 0 and math.isclose(t[-1].item(), 1.0, abs_tol=1e-7)
    assert (t[1:] >= t[:-1]).all() and t[1] < 1 / 29  # slow start
    assert torch.allclose(t + t.flip(0), torch.ones(30), atol=1e-6)  # eases out as it eases in
    assert t.diff().argmax() == 14  # fastest half way (29 steps: the 15th)


def test_interpolation_hits_both_context_poses_and_stays_rigid():
    extrinsics, _ = look_at_cameras(4, 2, torch.Generator().manual_seed(0), jitter=1.2)
    path = interpolate_extrinsics(extrinsics[:, 0], extrinsics[:, 1], smooth_t(9))
    assert path.shape == (4, 9, 4, 4) and path.dtype == extrinsics.dtype
    assert torch.allclose(path[:, 0], extrinsics[:, 0], atol=1e-5)
    assert torch.allclose(path[:, -1], extrinsics[:, 1], atol=1e-5)
    rotations = path[..., :3, :3].double()
    assert torch.allclose(rotations @ rotations.transpose(-1, -2), torch.eye(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(4, 9, dtype=torch.float64), atol=1e-5)


def test_interpolation_pivots_about_the_looked_at_point():
    """Two cameras on a circle looking at the same point: every frame looks at that point."""
    target = torch.tensor([0.3, -0.2, 5.0], dtype=torch.float64)
    cameras = []
    for angle in (-0.4, 0.5):
        origin = target + 5 * torch.tensor([math.sin(angle), 0.0, -math.cos(angle)], dtype=torch.float64)
        look = (target - origin) / (target - origin).norm()
        down = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        right = torch.linalg.cross(down, look)
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3] = torch.stack([right, down, look], dim=-1)
        c2w[:3, 3] = origin
        cameras.append(c2w)
    path = interpolate_extrinsics(cameras[0], cameras[1], torch.linspace(0, 1, 7, dtype=torch.float64))
    to_target = target - path[:, :3, 3]
    cosine = (to_target * path[:, :3, 2]).sum(-1) / to_target.norm(dim=-1)
    assert torch.allclose(cosine, torch.ones(7, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(to_target.norm(dim=-1), torch.full((7,), 5.0, dtype=torch.float64), atol=1e-9)


def test_parallel_looks_interpolate_translation_linearly():
    start = torch.eye(4)
    end = torch.eye(4)
    end[:3, 3] = torch.tensor([1.0, 0.5, 0.0])
    path = interpolate_extrinsics(start, end, torch.tensor([0.0, 0.25, 1.0]))
    assert torch.allclose(path[1, :3, 3], torch.tensor([0.25, 0.125, 0.0]), atol=1e-6)
    assert torch.allclose(path[:, :3, :3], torch.eye(3).expand(3, 3, 3), atol=1e-6)


def test_intrinsics_interpolate_linearly():
    a, b = torch.eye(3), 2 * torch.eye(3)
    path = interpolate_intrinsics(a[None], b[None], torch.tensor([0.0, 0.5, 1.0]))
    assert path.shape == (1, 3, 3, 3) and torch.allclose(path[0, 1], 1.5 * torch.eye(3))


def test_wobble_circles_in_the_image_plane():
    extrinsics, _ = look_at_cameras(1, 1, torch.Generator().manual_seed(2))
    c2w = extrinsics[0, 0]
    t = torch.linspace(0, 1, 9)
    path = generate_wobble(c2w, torch.tensor(0.4), t)
    assert path.shape == (9, 4, 4)
    offsets = (c2w[:3, :3].T @ (path[:, :3, 3] - c2w[:3, 3]).T).T  # in camera coordinates
    assert torch.allclose(offsets[:, 2], torch.zeros(9), atol=1e-6)  # no motion along the look axis
    assert torch.allclose(offsets[:, :2].norm(dim=-1), 0.4 * t, atol=1e-6)  # radius grows with t
    assert torch.allclose(offsets[4, :2], torch.tensor([0.0, 0.2]), atol=1e-6)  # half way: straight down
    assert torch.allclose(path[:, :3, :3], c2w[:3, :3].expand(9, 3, 3))
