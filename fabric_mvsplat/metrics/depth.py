"""Depth against ground truth, and the nearest-context-view baseline (test mode and validation)."""

import math

import torch
from torch import Tensor


def scored_pixels(ground_truth: Tensor, alpha: Tensor, min_alpha: float) -> Tensor:
    """The pixels depth is scored at: the render covers them (alpha > min_alpha) and their depth is known."""
    return (alpha > min_alpha) & (ground_truth > 0) & torch.isfinite(ground_truth)


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
    mask = scored_pixels(ground_truth, alpha, min_alpha)
    count = mask.sum(dim=(1, 2))
    truth = torch.where(mask, ground_truth, torch.ones_like(ground_truth))
    relative = (predicted - truth).abs() / truth
    ratio = torch.maximum(predicted / truth, truth / predicted.clamp_min(1e-12))
    abs_rel = torch.where(mask, relative, 0).sum(dim=(1, 2)) / count
    delta = (mask & (ratio < 1.25)).sum(dim=(1, 2)) / count
    return abs_rel.float(), delta.float()  # 0 / 0 = NaN where a view has no scored pixel


DEPTH_BINS = 6  # bins of true depth, log-spaced between near and far


def true_depth_edges(near: float, far: float, bins: int = DEPTH_BINS) -> list[float]:
    """bins + 1 edges, log-spaced from near to far: each bin spans the same depth ratio."""
    return torch.logspace(math.log10(near), math.log10(far), bins + 1, dtype=torch.float64).tolist()


@torch.no_grad()
def depth_error_sums_by_true_depth(ground_truth: Tensor, predicted: Tensor, alpha: Tensor, edges: list[float],
                                   min_alpha: float = 0.5) -> list[list[float]]:
    """Where the depth errors lie: z-depths [V, H, W] as in compute_depth_errors -> per bin of true depth
    (edges from true_depth_edges; depths below the first edge count in the first bin, beyond the last in the
    last) [pixels, sum of |p - t| / t, sum of log(p / t), pixels with max(p/t, t/p) < 1.25]: sums, so that
    scenes add up (depth_errors_by_true_depth turns them into means)."""
    ground_truth, predicted = ground_truth.double(), predicted.double()
    mask = scored_pixels(ground_truth, alpha, min_alpha)
    truth, guess = ground_truth[mask], predicted[mask].clamp_min(1e-12)
    bins = torch.bucketize(truth, torch.tensor(edges[1:-1], dtype=torch.float64), right=True)
    log_ratio = (guess / truth).log()
    per_pixel = torch.stack([torch.ones_like(truth), (guess - truth).abs() / truth, log_ratio,
                             (log_ratio.abs() < math.log(1.25)).double()], dim=1)
    sums = torch.zeros(len(edges) - 1, 4, dtype=torch.float64).index_add_(0, bins, per_pixel)
    return sums.tolist()


def depth_errors_by_true_depth(sums: list[list[float]], edges: list[float]) -> list[dict]:
    """Summed depth_error_sums_by_true_depth -> per bin: its depth range, share of the scored pixels, AbsRel, the
    geometric mean of predicted / true (below 1: placed too near) and delta<1.25 (None for an empty bin)."""
    total = sum(row[0] for row in sums)
    rows = []
    for (pixels, relative, log_ratio, within), low, high in zip(sums, edges[:-1], edges[1:]):
        scored = pixels > 0
        rows.append({"from": low, "to": high, "share": pixels / total if total else 0.0,
                     "abs_rel": relative / pixels if scored else None,
                     "ratio": math.exp(log_ratio / pixels) if scored else None,
                     "delta_1_25": within / pixels if scored else None})
    return rows


def nearest_context_images(context_images: Tensor, context_indices: Tensor, target_indices: Tensor) -> Tensor:
    """The nearest-context baseline: for each target frame, the context image nearest in frame index
    (ties: the earlier context in the list). [Vc, 3, H, W], [Vc], [Vt] -> [Vt, 3, H, W]."""
    distance = (target_indices[:, None].long() - context_indices[None, :].long()).abs()  # [Vt, Vc]
    return context_images[distance.argmin(dim=1)]
