"""Depth against ground truth, and the nearest-context-view baseline (test mode and validation)."""

import torch
from torch import Tensor


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
