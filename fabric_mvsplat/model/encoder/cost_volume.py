"""Plane-sweep cost volume between each view and the other views, in `(v b)` order."""

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor


def relative_poses(extrinsics: Tensor) -> list[Tensor]:
    """For each cyclic shift s = 1..V-1: [(v b), 4, 4] pose mapping view v's camera to view (v+s)'s.

    With two views the second pose is the inverse of the first (not recomputed), as the original
    does, which keeps its float rounding.
    """
    b, v = extrinsics.shape[:2]
    extrinsics = extrinsics.detach()
    if v == 2:
        pose = extrinsics[:, 1].inverse() @ extrinsics[:, 0]
        return [torch.cat((pose, pose.inverse()), dim=0)]
    poses = []
    for shift in range(1, v):
        order = [(i + shift) % v for i in range(v)]
        poses.append(torch.cat([extrinsics[:, j].inverse() @ extrinsics[:, i] for i, j in enumerate(order)], dim=0))
    return poses


def shifted_features(features: Tensor) -> list[Tensor]:
    """features [b, v, c, h, w] -> for shifts s = 1..V-1, view (v+s) mod V's features as [(v b), c, h, w]."""
    v = features.shape[1]
    return [
        rearrange(features[:, [(i + shift) % v for i in range(v)]], "b v ... -> (v b) ...")
        for shift in range(1, v)
    ]


def feature_intrinsics(intrinsics: Tensor, h: int, w: int) -> Tensor:
    """Normalised [b, v, 3, 3] -> pixel units of the h x w feature grid, [(v b), 3, 3]."""
    k = intrinsics[..., :3, :3].detach().clone()
    k[..., 0, :] *= float(w)
    k[..., 1, :] *= float(h)
    return rearrange(k, "b v i j -> (v b) i j")


def disparity_candidates(near: Tensor, far: Tensor, num_candidates: int, dtype: torch.dtype) -> Tensor:
    """[(v b), D, 1, 1] disparities linear from 1/far (index 0) to 1/near (index D-1)."""
    low = rearrange(1.0 / far.detach(), "b v -> (v b) 1")
    high = rearrange(1.0 / near.detach(), "b v -> (v b) 1")
    steps = torch.linspace(0.0, 1.0, num_candidates, device=near.device).unsqueeze(0)
    return repeat((low + steps * (high - low)).to(dtype), "vb d -> vb d () ()")


def warp_to_candidates(other: Tensor, intrinsics: Tensor, pose: Tensor, depths: Tensor) -> Tensor:
    """Sample `other` [N, C, h, w] at the reprojection of every reference pixel at every candidate
    z-depth depths [N, D, h, w]. Pixels sit on the integer grid 0..w-1 (no +0.5), as the weights expect.
    Returns [N, C, D, h, w] in float32."""
    n, d, h, w = depths.shape
    c = other.shape[1]
    # Coordinates in fp32 even under bf16 autocast: bf16 would misplace samples by up to 1/4 pixel.
    with torch.no_grad(), torch.autocast(device_type=depths.device.type, enabled=False):
        intrinsics, pose, depths = intrinsics.float(), pose.float(), depths.float()
        ys, xs = torch.meshgrid(
            torch.arange(h, device=depths.device, dtype=depths.dtype),
            torch.arange(w, device=depths.device, dtype=depths.dtype), indexing="ij")
        grid = torch.stack([xs, ys, torch.ones_like(xs)]).view(1, 3, h * w).expand(n, 3, h * w)
        points = torch.inverse(intrinsics).bmm(grid)
        points = torch.bmm(pose[:, :3, :3], points).unsqueeze(2).repeat(1, 1, d, 1) * depths.view(n, 1, d, h * w)
        points = points + pose[:, :3, -1:].unsqueeze(-1)
        points = torch.bmm(intrinsics, points.view(n, 3, -1)).view(n, 3, d, h * w)
        pixels = points[:, :2] / points[:, -1:].clamp(min=1e-3)
        x_grid = 2 * pixels[:, 0] / (w - 1) - 1
        y_grid = 2 * pixels[:, 1] / (h - 1) - 1
        sample_grid = torch.stack([x_grid, y_grid], dim=-1)
    # Sampled in fp32 with the fp32 grid (autocast would run grid_sample in fp32 anyway, after a bf16 grid
    # had already lost the sub-pixel positions); the result is fp32, as grid_sample gives under autocast.
    warped = F.grid_sample(other.float(), sample_grid.view(n, d * h, w, 2), mode="bilinear", padding_mode="zeros",
                           align_corners=True)
    return warped.view(n, c, d, h, w)


def correlation_volume(features: Tensor, intrinsics: Tensor, extrinsics: Tensor, disparities: Tensor) -> Tensor:
    """Average over the other views of <f_ref, warped f_other> / sqrt(C).

    features [b, v, c, h, w]; disparities [(v b), D, 1, 1]. Returns [(v b), D, h, w].
    """
    b, v, c, h, w = features.shape
    reference = rearrange(features, "b v ... -> (v b) ...")
    k = feature_intrinsics(intrinsics, h, w)
    depths = 1.0 / disparities.repeat(1, 1, h, w)
    volumes = []
    for other, pose in zip(shifted_features(features), relative_poses(extrinsics)):
        warped = warp_to_candidates(other, k, pose, depths)
        volumes.append((reference.unsqueeze(2) * warped).sum(1) / (c**0.5))
    return torch.stack(volumes).mean(0)
