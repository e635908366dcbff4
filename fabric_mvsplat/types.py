"""The tensors that flow between encoder, decoder, losses and exporters."""

from dataclasses import dataclass
from typing import NotRequired, TypedDict

from torch import Tensor


@dataclass
class Gaussians:
    """One batch of 3D Gaussians in world space (OpenCV camera convention, c2w extrinsics).

    Shapes (G = context views x H x W x gaussians_per_pixel):
        means        [B, G, 3]
        covariances  [B, G, 3, 3]   world-space covariance
        harmonics    [B, G, 3, d_sh] SH coefficients per colour channel, d_sh = (sh_degree + 1)^2,
                                     in the original MVSplat convention (see decoder README section)
        opacities    [B, G]          in [0, 1]
    """

    means: Tensor
    covariances: Tensor
    harmonics: Tensor
    opacities: Tensor


class BatchedViews(TypedDict):
    """One side (context or target) of a batch, after default collation.

    extrinsics [B, V, 4, 4] camera-to-world, OpenCV (+x right, +y down, +z forward)
    intrinsics [B, V, 3, 3] normalised (fx, cx divided by width; fy, cy by height)
    image      [B, V, 3, H, W] float in [0, 1]
    near, far  [B, V]
    index      [B, V] int64 frame indices
    """

    extrinsics: Tensor
    intrinsics: Tensor
    image: Tensor
    near: Tensor
    far: Tensor
    index: Tensor


class BatchedExample(TypedDict):
    context: BatchedViews
    target: BatchedViews
    scene: list[str]  # the dataset's scene keys
    file_name: NotRequired[list[str]]  # test batches: each key as a safe file name (data.scene_names)


@dataclass
class StepOutput:
    """What one training forward returns to the loop.

    loss: scalar the loop runs backward on (sum of the weighted losses)
    logs: scalars to log on rank 0 after averaging over ranks, e.g. ``loss/mse``,
          ``loss/total``, ``train/psnr``, ``info/near``, ``info/far``
    """

    loss: Tensor
    logs: dict[str, Tensor]


@dataclass
class ValidationOutput:
    """What one validation batch produces for TensorBoard.

    scalars: e.g. ``val/psnr``
    images:  name -> [3, H, W] float in [0, 1]
    videos:  name -> [T, 3, H, W] float in [0, 1]
    """

    scalars: dict[str, float]
    images: dict[str, Tensor]
    videos: dict[str, Tensor]
