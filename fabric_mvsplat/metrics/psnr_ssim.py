"""Image metrics with the original MVSplat definitions.

All metrics run on the float renders (never on re-quantised PNGs), one value per image.
LPIPS lives in :mod:`fabric_mvsplat.metrics.lpips` because it needs weights.
"""

import torch
import torch.nn.functional as F
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


SSIM_WINDOW = 11  # pixels, Gaussian with sigma 1.5: scikit-image's gaussian_weights=True, as compute_ssim uses
SSIM_SIGMA = 1.5


def ssim_map(ground_truth: Tensor, predicted: Tensor) -> Tensor:
    """[B, C, H, W] x2 -> [B, C, H-10, W-10] local SSIM, differentiable (the SSIM loss).

    The same statistics as compute_ssim (scikit-image): Gaussian-weighted means, unbiased-corrected
    (co)variances, C1 = 0.01², C2 = 0.03² for a data range of 1, and only windows that lie inside the image;
    compute_ssim is the mean of this map. Images need at least 11 px on a side."""
    _check_pair(ground_truth, predicted)
    channels = ground_truth.shape[1]
    offsets = torch.arange(SSIM_WINDOW, dtype=predicted.dtype, device=predicted.device) - (SSIM_WINDOW - 1) / 2
    profile = torch.exp(-offsets**2 / (2 * SSIM_SIGMA**2))
    profile = profile / profile.sum()
    window = (profile[:, None] * profile[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def local_mean(image: Tensor) -> Tensor:
        return F.conv2d(image, window, groups=channels)

    # scikit-image rescales the weighted variances by n / (n - 1), n = window area ("use_sample_covariance")
    sample = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    mean_true, mean_pred = local_mean(ground_truth), local_mean(predicted)
    var_true = sample * (local_mean(ground_truth * ground_truth) - mean_true**2)
    var_pred = sample * (local_mean(predicted * predicted) - mean_pred**2)
    covariance = sample * (local_mean(ground_truth * predicted) - mean_true * mean_pred)
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mean_true * mean_pred + c1) * (2 * covariance + c2)) / (
        (mean_true**2 + mean_pred**2 + c1) * (var_true + var_pred + c2))
