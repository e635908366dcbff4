"""Image metrics with the original MVSplat definitions (spec §8.4).

All metrics run on the float renders (never on re-quantised PNGs), one value per image.
LPIPS lives in :mod:`fabric_mvsplat.evaluation.lpips` because it needs weights.
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


@torch.no_grad()
def compute_depth_errors(ground_truth: Tensor, predicted: Tensor, alpha: Tensor,
                         min_alpha: float = 0.5) -> tuple[Tensor, Tensor]:
    """z-depths [V, H, W] (ground truth: 0 where unknown), accumulated alpha [V, H, W] -> (AbsRel [V],
    delta<1.25 [V]) over the pixels the render covers (alpha > min_alpha) that have a known depth.

    AbsRel = mean |predicted - truth| / truth; delta<1.25 = the fraction with max(p/t, t/p) < 1.25
    (the monocular-depth literature's standard pair). NaN for a view without such pixels.
    """
    if not ground_truth.shape == predicted.shape == alpha.shape or ground_truth.ndim != 3:
        raise ValueError(f"depth errors expect three [V, H, W] tensors, got ground_truth {tuple(ground_truth.shape)}, "
                         f"predicted {tuple(predicted.shape)}, alpha {tuple(alpha.shape)}")
    ground_truth, predicted = ground_truth.double(), predicted.double()
    mask = (alpha > min_alpha) & (ground_truth > 0) & torch.isfinite(ground_truth)
    count = mask.sum(dim=(1, 2))
    truth = torch.where(mask, ground_truth, torch.ones_like(ground_truth))
    relative = (predicted - truth).abs() / truth
    ratio = torch.maximum(predicted / truth, truth / predicted.clamp_min(1e-12))
    abs_rel = torch.where(mask, relative, 0).sum(dim=(1, 2)) / count
    delta = (mask & (ratio < 1.25)).sum(dim=(1, 2)) / count
    return abs_rel.float(), delta.float()  # 0 / 0 = NaN where a view has no scored pixel


def nearest_context_images(context_images: Tensor, context_indices: Tensor, target_indices: Tensor) -> Tensor:
    """The nearest-context baseline: for each target frame, the context image nearest in frame index
    (ties: the earlier context in the list). [Vc, 3, H, W], [Vc], [Vt] -> [Vt, 3, H, W]."""
    distance = (target_indices[:, None].long() - context_indices[None, :].long()).abs()  # [Vt, Vc]
    return context_images[distance.argmin(dim=1)]
