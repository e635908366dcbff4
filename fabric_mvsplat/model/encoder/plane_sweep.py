"""Is the cost volume still matching? Statistics of the depth head's softmax over the D depth candidates.

`mode=inspect` reports them and validation logs the commonest candidate's share (`val/plane_sweep_commonest_share`):
one candidate the most probable nearly everywhere means the coarse depth is a constant, and the depth is what the
refinement U-Net makes of one image (docs/debugging.md, "A plane sweep that no longer matches").
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

# One candidate the most probable at this fraction of the pixels: the plane sweep no longer matches. A fresh demo
# model's commonest candidate wins ~70% of the pixels (its features' large dot products saturate the softmax);
# 20 steps later 95%, after 120 all of them (docs/demo.md, "Where the depth comes from").
COLLAPSED = 0.9


class PlaneSweepStatistics(NamedTuple):
    probabilities: Tensor  # [(v b), D, h, w] the softmax over the candidates at each low-resolution context pixel
    entropy: Tensor  # [(v b), h, w] in nats (uniform over D candidates: log D)
    winners: int  # candidates that are the most probable at one pixel at least
    commonest: int  # the candidate most often the most probable
    commonest_share: float  # the fraction of the pixels where it is

    @property
    def collapsed(self) -> bool:
        return self.probabilities.shape[1] > 1 and is_collapsed(self.commonest_share)


def is_collapsed(commonest_share: float) -> bool:
    """One candidate the most probable at this share of the pixels: the plane sweep no longer matches."""
    return commonest_share >= COLLAPSED


def plane_sweep_statistics(depth_logits: Tensor) -> PlaneSweepStatistics:
    """depth_logits [(v b), D, h, w]: the depth head's output, before its softmax over the D candidates."""
    probabilities = depth_logits.detach().float().softmax(dim=1)
    count = probabilities.shape[1]
    votes = torch.bincount(probabilities.argmax(dim=1).flatten(), minlength=count)
    commonest = int(votes.argmax())
    return PlaneSweepStatistics(
        probabilities=probabilities,
        entropy=torch.special.entr(probabilities).sum(dim=1),  # -sum p log p
        winners=int((votes > 0).sum()),
        commonest=commonest,
        commonest_share=float(votes[commonest] / votes.sum()),
    )


@contextmanager
def depth_logits_of(encoder: nn.Module) -> Iterator[list[Tensor]]:
    """Collects the depth head's logits of every encoder forward inside the block (a forward hook; the model's
    outputs are unchanged)."""
    captured: list[Tensor] = []
    hook = encoder.depth_predictor.depth_head_lowres.register_forward_hook(
        lambda module, args, output: captured.append(output.detach()))
    try:
        yield captured
    finally:
        hook.remove()
