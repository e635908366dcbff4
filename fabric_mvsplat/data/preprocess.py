"""Decoded frames + cameras -> the model's input views: the one preprocessing path of test mode (through
:class:`~fabric_mvsplat.data.chunks.ExampleBuilder`) and of `fabric_mvsplat.render` / the Python API.

The steps, in the original's order: divide every camera centre by the context baseline
(`dataset.make_baseline_1`, two context views), mirror the cameras for a flipped training example,
LANCZOS-resize each frame to cover `dataset.image_shape` and centre-crop it (intrinsics updated to match),
and give every view near/far (`dataset.near`/`far`, divided by the baseline under
`dataset.baseline_scale_bounds`).
"""

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..camera import crop_intrinsics
from .config import DatasetCfg
from .shims import reflect_extrinsics, rescale_and_crop, scaled_shape, to_float_image
from .view_sampler import SceneRejected

DEFAULT_NEAR, DEFAULT_FAR = 0.1, 1000.0  # dataset.near / far = -1


@dataclass(frozen=True)
class Preprocessing:
    """The dataset config keys the preprocessing reads."""

    image_shape: tuple[int, int]  # (H, W) of the model's input
    near: float
    far: float
    make_baseline_1: bool
    baseline_scale_bounds: bool
    baseline_epsilon: float

    @classmethod
    def from_cfg(cls, cfg: DatasetCfg) -> "Preprocessing":
        return cls(image_shape=(int(cfg.image_shape[0]), int(cfg.image_shape[1])),
                   near=DEFAULT_NEAR if cfg.near == -1 else cfg.near, far=DEFAULT_FAR if cfg.far == -1 else cfg.far,
                   make_baseline_1=cfg.make_baseline_1, baseline_scale_bounds=cfg.baseline_scale_bounds,
                   baseline_epsilon=cfg.baseline_epsilon)


@dataclass
class PreparedViews:
    """context / target: un-batched views (extrinsics [V,4,4] c2w in scaled units, intrinsics [V,3,3]
    normalised for the cropped image, image [V,3,H,W] in [0,1], near/far [V], index [V]).
    scale: the world units per model unit (the context baseline, or 1)."""

    context: dict
    target: dict
    scale: float


def baseline_scale(extrinsics: Tensor, context: Tensor, preprocessing: Preprocessing, key: str) -> float:
    """The factor camera centres are divided by: the distance between the two context cameras, or 1.
    Raises SceneRejected('baseline_epsilon') when the two context cameras (almost) coincide."""
    if len(context) != 2 or not preprocessing.make_baseline_1:
        return 1.0
    scale = float((extrinsics[context[0], :3, 3] - extrinsics[context[1], :3, 3]).norm())
    if scale < preprocessing.baseline_epsilon:
        raise SceneRejected("baseline_epsilon", f"scene {key!r}: context baseline {scale:.2e} < "
                            f"dataset.baseline_epsilon={preprocessing.baseline_epsilon}")
    return scale


def preprocess_views(frames: Mapping[int, Image.Image], extrinsics: Tensor, intrinsics: Tensor, context: Tensor,
                     target: Tensor, preprocessing: Preprocessing, *, flip: bool = False,
                     key: str = "scene") -> PreparedViews:
    """frames: RGB images by frame index (any size); extrinsics [N,4,4] c2w OpenCV, intrinsics [N,3,3]
    normalised for the frames as they are; context / target: int64 frame indices."""
    extrinsics = extrinsics.clone()
    scale = baseline_scale(extrinsics, context, preprocessing, key)
    if scale != 1.0:
        extrinsics[:, :3, 3] /= scale
    near_far_scale = scale if preprocessing.baseline_scale_bounds else 1.0
    if flip:
        extrinsics = reflect_extrinsics(extrinsics)
    cropped: dict[int, np.ndarray] = {}  # a frame can be a context and a target, or a target twice
    sides = {}
    for side, indices in (("context", context), ("target", target)):
        images, cropped_intrinsics = [], []
        for i in indices.tolist():
            if i not in cropped:
                frame = frames[i].transpose(Image.FLIP_LEFT_RIGHT) if flip else frames[i]
                cropped[i] = to_float_image(rescale_and_crop(frame, preprocessing.image_shape))
            images.append(cropped[i])
            resized = scaled_shape((frames[i].height, frames[i].width), preprocessing.image_shape)
            cropped_intrinsics.append(crop_intrinsics(intrinsics[i], resized, preprocessing.image_shape))
        count = len(indices)
        height, width = preprocessing.image_shape
        sides[side] = {
            "extrinsics": extrinsics[indices],
            "intrinsics": torch.stack(cropped_intrinsics) if count else torch.zeros(0, 3, 3),
            "image": torch.from_numpy(np.stack(images)) if count else torch.zeros(0, 3, height, width),
            "near": torch.full((count,), preprocessing.near / near_far_scale),
            "far": torch.full((count,), preprocessing.far / near_far_scale),
            "index": indices.to(torch.int64),
        }
    return PreparedViews(sides["context"], sides["target"], scale)
