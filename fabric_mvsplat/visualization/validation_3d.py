"""The original's 3D validation images: the Gaussians seen along each world axis ("projection") and the camera
frusta drawn on the three axis planes ("cameras"), each a row of three labelled 256-px panels.

Axis a's panel looks along world axis a, with world axis (a + 1) % 3 to the right and (a + 2) % 3 down (YZ, ZX,
XY). Both images frame an axis-aligned cube: the bounding box of what they show, made cubic (its largest side)
and enlarged by a 10 % margin.
"""

import math

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .layout import hcat, image_tensor, text_image, vcat

PROJECTION_FOV_DEGREES = 10.0  # the original's near-orthographic camera: moved back until 10 deg span the cube
MARGIN = 0.1
FRUSTUM_SCALE = 0.05  # frustum depth drawn, relative to the cube's side
PLANE_GREY = 0.25  # near/far planes and their connecting edges


def cube_around(minima: Tensor, maxima: Tensor, margin: float = MARGIN) -> tuple[Tensor, Tensor]:
    """[..., 3] box -> the cube with the box's midpoint and its largest side x (1 + margin)."""
    midpoint = (maxima + minima) / 2
    span = (maxima - minima).max() * (1 + margin)
    return midpoint - span / 2, midpoint + span / 2


def axis_names(look_axis: int) -> str:
    return "XYZ"[(look_axis + 1) % 3] + "XYZ"[(look_axis + 2) % 3]


def projection_cameras(means: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """means [B, G, 3] -> (extrinsics [B, 3, 4, 4] c2w, normalised intrinsics [B, 3, 3, 3], near, far [B, 3]):
    one camera per world axis, 10 deg field of view, backed off so that the cube around the Gaussians fills the
    image (nearly orthographic), as the original's render_projections."""
    b = means.shape[0]
    cube_min, cube_max = cube_around(means.min(dim=1).values, means.max(dim=1).values)  # [B, 3]
    side = (cube_max - cube_min)[:, 0]  # a cube: every side equal
    tan_half_fov = math.tan(math.radians(PROJECTION_FOV_DEGREES) / 2)
    distance = 0.5 * side / tan_half_fov  # from the camera to the cube's near face
    extrinsics = torch.zeros(b, 3, 4, 4, dtype=means.dtype, device=means.device)
    for look in range(3):
        right, down = (look + 1) % 3, (look + 2) % 3
        extrinsics[:, look, right, 0] = 1
        extrinsics[:, look, down, 1] = 1
        extrinsics[:, look, look, 2] = 1
        extrinsics[:, look, right, 3] = (cube_min[:, right] + cube_max[:, right]) / 2
        extrinsics[:, look, down, 3] = (cube_min[:, down] + cube_max[:, down]) / 2
        extrinsics[:, look, look, 3] = cube_min[:, look] - distance
        extrinsics[:, look, 3, 3] = 1
    intrinsics = torch.zeros(b, 3, 3, 3, dtype=means.dtype, device=means.device)
    intrinsics[..., 0, 0] = intrinsics[..., 1, 1] = 0.5 / tan_half_fov
    intrinsics[..., 0, 2] = intrinsics[..., 1, 2] = 0.5
    intrinsics[..., 2, 2] = 1
    near = distance[:, None].expand(b, 3)
    far = (distance + side)[:, None].expand(b, 3)
    return extrinsics, intrinsics, near.contiguous(), far.contiguous()


def label_panels(panels: list[Tensor], labels: list[str]) -> Tensor:
    """[3, H, W] panels, each under its label, side by side -> one [3, H', W'] image."""
    return hcat([vcat([text_image([label], 14, panel.shape[-1]), panel.cpu().float()], gap=0)
                 for panel, label in zip(panels, labels)], gap=4)


def projection_image(renders: Tensor) -> Tensor:
    """renders [3 axes, 3, H, W] of projection_cameras -> the labelled "projection" image."""
    return label_panels([image.clamp(0, 1) for image in renders],
                        [f"{axis_names(look)} Projection" for look in range(3)])


def frustum_corners(extrinsics: Tensor, intrinsics: Tensor, depth: Tensor) -> Tensor:
    """c2w [N, 4, 4], normalised K [N, 3, 3], z-depth [N] -> world corners [N, 4, 3] of the image rectangle at that
    depth, in drawing order (top-left, top-right, bottom-right, bottom-left)."""
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=extrinsics.dtype,
                      device=extrinsics.device)
    pixels = torch.cat([uv, torch.ones_like(uv[:, :1])], dim=-1)  # [4, 3]
    directions = torch.einsum("nij,pj->npi", intrinsics.inverse(), pixels)
    directions = directions / directions[..., 2:]  # z = 1: depth times it lies at that z-depth
    directions = torch.einsum("nij,npj->npi", extrinsics[:, :3, :3], directions)
    return extrinsics[:, None, :3, 3] + depth[:, None, None] * directions


def camera_image(extrinsics: Tensor, intrinsics: Tensor, near: Tensor, far: Tensor, colors: Tensor,
                 resolution: int = 256) -> Tensor:
    """Cameras c2w [N, 4, 4], K [N, 3, 3], near/far [N], line colours [N, 3] -> the labelled "cameras" image:
    on each axis plane, every camera's near and far rectangles and the edges joining them (grey), and its
    frustum (centre to a small image rectangle) in its colour, on black."""
    extrinsics, intrinsics, near, far = (t.detach().double().cpu() for t in (extrinsics, intrinsics, near, far))
    near_corners = frustum_corners(extrinsics, intrinsics, near)
    far_corners = frustum_corners(extrinsics, intrinsics, far)
    origins = extrinsics[:, :3, 3]
    points = torch.cat([origins, near_corners.flatten(0, 1), far_corners.flatten(0, 1)])
    cube_min, cube_max = cube_around(points.min(dim=0).values, points.max(dim=0).values)
    small = frustum_corners(extrinsics, intrinsics, ((cube_max - cube_min).max() * FRUSTUM_SCALE).expand(len(origins)))
    grey = (round(PLANE_GREY * 255),) * 3
    colors_255 = [tuple(int(round(255 * c)) for c in color.tolist()) for color in colors.detach().cpu().clamp(0, 1)]

    panels = []
    for look in range(3):
        x_axis, y_axis = (look + 1) % 3, (look + 2) % 3
        lo = torch.stack([cube_min[x_axis], cube_min[y_axis]])
        extent = torch.stack([cube_max[x_axis], cube_max[y_axis]]) - lo

        def to_pixels(p: Tensor) -> list[tuple[float, float]]:
            xy = (torch.stack([p[..., x_axis], p[..., y_axis]], dim=-1) - lo) / extent * resolution
            return [tuple(point) for point in xy.reshape(-1, 2).tolist()]

        canvas = Image.new("RGB", (resolution, resolution))
        draw = ImageDraw.Draw(canvas)
        for n in range(len(origins)):
            near_px, far_px = to_pixels(near_corners[n]), to_pixels(far_corners[n])
            for i in range(4):
                draw.line([near_px[i - 1], near_px[i]], fill=grey, width=2)
                draw.line([far_px[i - 1], far_px[i]], fill=grey, width=2)
                draw.line([near_px[i], far_px[i]], fill=grey, width=2)
        for n in range(len(origins)):  # frusta over the planes
            origin, corners = to_pixels(origins[n])[0], to_pixels(small[n])
            for i in range(4):
                draw.line([origin, corners[i]], fill=colors_255[n], width=2)
                draw.line([corners[i - 1], corners[i]], fill=colors_255[n], width=2)
        panels.append(image_tensor(canvas))
    return label_panels(panels, [f"{axis_names(look)} Projection" for look in range(3)])


def depth_video_colors(depth: Tensor) -> Tensor:
    """Video depth [T, H, W] (accumulated, not normalised) -> [T, 3, H, W] as the original colours it: log depth
    between its 1 % quantile (over positive values) and 99 % quantile (over all frames' pixels), reversed so that
    near is at the warm end of the ramp and far at the cold end (as its 1 - x under turbo); empty pixels warm."""
    from .layout import apply_color_map

    flat = depth.reshape(-1).float()
    positive = flat[flat > 0]
    if positive.numel() == 0:
        return torch.zeros(depth.shape[0], 3, *depth.shape[1:], dtype=depth.dtype, device=depth.device)
    low = torch.quantile(positive[:16_000_000], 0.01).log()
    high = torch.quantile(flat[:16_000_000], 0.99).clamp_min(torch.finfo(flat.dtype).tiny).log()
    normalized = 1 - (depth.float().clamp_min(torch.finfo(flat.dtype).tiny).log() - low) / (high - low)
    return apply_color_map(normalized).movedim(-1, -3)
