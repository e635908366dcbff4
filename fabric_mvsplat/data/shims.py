"""Per-example image/camera transforms: flip augmentation, rescale + center crop (the crop and its
intrinsics come from :mod:`fabric_mvsplat.camera`, shared with the encoder's shim).

Images stay uint8 until the end; the original quantised its [0, 1] floats back to uint8 before the
LANCZOS resize, which gives the same pixels as resizing the decoded uint8 frame directly.
"""

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..camera import center_crop_box


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
    row, col = center_crop_box((h_scaled, w_scaled), shape)
    return np.asarray(image.crop((col, row, col + w_out, row + h_out)))


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
