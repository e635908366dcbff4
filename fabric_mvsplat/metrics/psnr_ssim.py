"""Image metrics with the original MVSplat definitions.

All metrics run on the float renders (never on re-quantised PNGs), one value per image.
LPIPS lives in :mod:`fabric_mvsplat.metrics.lpips` because it needs weights.
"""

import torch
from einops import reduce
from skimage.metrics import structural_similarity
from torch import Tensor


def _check_pair(ground_truth: Tensor, predicted: Tensor) -> None:
    if ground_truth.shape != predicted.shape or ground_truth.ndim != 4:
        raise ValueError(
            f"metrics expect two [B, C, H, W] tensors of the same shape, got ground_truth "
            f"{tuple(ground_truth.shape)} and predicted {tuple(predicted.shape)}"
        )


@torch.no_grad()
def compute_psnr(ground_truth: Tensor, predicted: Tensor) -> Tensor:
    """[B, C, H, W] x2 -> [B] PSNR in dB; both clipped to [0, 1] first (identical images -> inf)."""
    _check_pair(ground_truth, predicted)
    ground_truth = ground_truth.clip(min=0, max=1)
    predicted = predicted.clip(min=0, max=1)
    mse = reduce((ground_truth - predicted) ** 2, "b c h w -> b", "mean")
    return -10 * mse.log10()


@torch.no_grad()
def compute_ssim(ground_truth: Tensor, predicted: Tensor) -> Tensor:
    """[B, C, H, W] x2 -> [B] SSIM, scikit-image with an 11-px Gaussian window (sigma 1.5).

    Like the original, images are not clipped (renders may exceed 1; data_range stays 1).
    Runs on CPU numpy per image; images smaller than 11 px on a side are rejected by skimage.
    """
    _check_pair(ground_truth, predicted)
    scores = [
        structural_similarity(
            gt.detach().float().cpu().numpy(),
            hat.detach().float().cpu().numpy(),
            win_size=11,
            gaussian_weights=True,
            channel_axis=0,
            data_range=1.0,
        )
        for gt, hat in zip(ground_truth, predicted)
    ]
    return torch.tensor(scores, dtype=predicted.dtype, device=predicted.device)
