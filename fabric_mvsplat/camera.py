"""Camera helpers shared by the data pipeline and the model (neither imports the other).

Intrinsics are normalised (fx, cx divided by the width; fy, cy by the height), [..., 3, 3].
"""

import torch
from torch import Tensor


def field_of_view(intrinsics: Tensor) -> Tensor:
    """Normalised K [..., 3, 3] -> (fov_x, fov_y) in radians [..., 2], as the original measures it: the angle
    between the rays through the left/right (top/bottom) image-edge midpoints."""
    inverse = intrinsics.inverse()

    def ray(u: float, v: float) -> Tensor:
        point = torch.tensor([u, v, 1.0], dtype=intrinsics.dtype, device=intrinsics.device)
        direction = inverse @ point
        return direction / direction.norm(dim=-1, keepdim=True)

    fov_x = (ray(0.0, 0.5) * ray(1.0, 0.5)).sum(-1).clamp(-1, 1).acos()
    fov_y = (ray(0.5, 0.0) * ray(0.5, 1.0)).sum(-1).clamp(-1, 1).acos()
    return torch.stack([fov_x, fov_y], dim=-1)


def center_crop_box(shape: tuple[int, int], crop_shape: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the top-left corner of a centre crop from `shape` (h, w) to `crop_shape` (h, w)."""
    return (shape[0] - crop_shape[0]) // 2, (shape[1] - crop_shape[1]) // 2


def crop_intrinsics(intrinsics: Tensor, shape: tuple[int, int], crop_shape: tuple[int, int]) -> Tensor:
    """Normalised K of a centre crop from `shape` to `crop_shape` (h, w), the original's update: fx, fy scale
    by the size ratio; cx, cy stay (the crop is centred, so the principal point keeps its half-pixel offset)."""
    intrinsics = intrinsics.clone()
    intrinsics[..., 0, 0] *= shape[1] / crop_shape[1]
    intrinsics[..., 1, 1] *= shape[0] / crop_shape[0]
    return intrinsics
