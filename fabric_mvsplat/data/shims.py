"""Per-example image/camera transforms: field-of-view filter, flip augmentation, rescale + center crop.

Images stay uint8 until the end; the original quantised its [0, 1] floats back to uint8 before the
LANCZOS resize, which gives the same pixels as resizing the decoded uint8 frame directly.
"""

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def field_of_view(intrinsics: Tensor) -> Tensor:
    """Normalised K [V, 3, 3] -> (fov_x, fov_y) in radians [V, 2], measured between image edge midpoints."""
    inverse = np.linalg.inv(intrinsics.double().numpy())  # numpy: see to_float_image

    def direction(point: list[float]) -> np.ndarray:
        ray = inverse @ np.array(point, dtype=np.float64)
        return ray / np.linalg.norm(ray, axis=-1, keepdims=True)

    fov_x = np.arccos(np.clip((direction([0, 0.5, 1]) * direction([1, 0.5, 1])).sum(-1), -1, 1))
    fov_y = np.arccos(np.clip((direction([0.5, 0, 1]) * direction([0.5, 1, 1])).sum(-1), -1, 1))
    return torch.from_numpy(np.stack([fov_x, fov_y], axis=-1).astype(np.float32))


def reflect_extrinsics(extrinsics: Tensor) -> Tensor:
    """Mirror camera-to-world [..., 4, 4] across the x axis: D E D, D = diag(-1, 1, 1, 1)."""
    # Sign flips instead of two matmuls (those go to the BLAS thread pool, see to_float_image).
    reflected = extrinsics.clone()
    reflected[..., 0, :] *= -1
    reflected[..., :, 0] *= -1
    return reflected


def rescale_and_crop(image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
    """RGB image (H, W) -> uint8 [h, w, 3]: LANCZOS-resize to cover `shape`, then center crop."""
    h_out, w_out = shape
    h_scaled, w_scaled = scaled_shape((image.height, image.width), shape)
    if (h_scaled, w_scaled) != (image.height, image.width):
        image = image.resize((w_scaled, h_scaled), Image.LANCZOS)
    row, col = (h_scaled - h_out) // 2, (w_scaled - w_out) // 2
    return np.asarray(image.crop((col, row, col + w_out, row + h_out)))


def crop_intrinsics(intrinsics: Tensor, scaled_shape: tuple[int, int], shape: tuple[int, int]) -> Tensor:
    """The original's crop update of normalised K: only fx, fy change; cx, cy stay (half-pixel offset kept)."""
    intrinsics = intrinsics.clone()
    intrinsics[..., 0, 0] *= scaled_shape[1] / shape[1]
    intrinsics[..., 1, 1] *= scaled_shape[0] / shape[0]
    return intrinsics


def scaled_shape(original: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) an image of `original` size is resized to before the center crop to `shape`."""
    scale = max(shape[0] / original[0], shape[1] / original[1])
    return round(original[0] * scale), round(original[1] * scale)


def to_float_image(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1].

    numpy on purpose, like the stacking and collation downstream: torch runs these element-wise ops on
    its OpenMP pool, which stalls badly on an oversubscribed CPU (in-process loading measured 4-7x slower
    on a busy 2-core host).
    """
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)
