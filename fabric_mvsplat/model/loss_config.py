"""Typed config of the losses (`fabric_mvsplat/configs/loss/{mse,lpips,depth}.yaml`)."""

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError


@dataclass
class LossMseCfg:
    weight: float = 1.0


@dataclass
class LossLpipsCfg:
    weight: float = 0.05
    apply_after_step: int = 150_000
    # Directory with `vgg16.pth` (torchvision's vgg16 state_dict, downloaded as
    # vgg16-397923af.pth) and `vgg.pth` (the lpips package's v0.1 linear heads).
    weights: str | None = None
    # Added: recompute the frozen VGG in backward instead of keeping its activations (the largest
    # single share of training memory at batch 14, 256x256; costs one more VGG forward per step).
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.apply_after_step < 0:
            raise ConfigError("apply_after_step", self.apply_after_step, "an integer >= 0")


@dataclass
class LossDepthCfg:
    weight: float = 0.25
    sigma_image: float | None = None
    use_second_derivative: bool = False
    # Added. The edge-aware weight exp(-sigma_image * g) of a depth difference, g the colour difference of the
    # same neighbours: "signed" (the original) takes g = the largest signed difference over the channels (a
    # falling edge can weigh more than 1); "absolute" takes the largest absolute difference.
    color_gradient: Literal["signed", "absolute"] = "signed"


@dataclass
class LossSsimCfg:
    """Added (the original has no SSIM loss): weight * (1 - mean SSIM) of each rendered target view against its
    image, SSIM as the test score computes it (11-px Gaussian window, sigma 1.5). It weighs a faint texture's
    misalignment by the texture's own contrast, where MSE weighs it by its small absolute error."""

    weight: float = 0.05

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError("weight", self.weight, "a weight >= 0")


@dataclass
class LossCfg:
    """`loss:` after composition is a dict keyed by loss name; absent losses are None."""

    mse: LossMseCfg | None = None
    lpips: LossLpipsCfg | None = None
    depth: LossDepthCfg | None = None
    ssim: LossSsimCfg | None = None

    def enabled(self) -> list[str]:
        """The names of the losses this config trains with, in the order they are summed."""
        return [name for name in ("mse", "lpips", "depth", "ssim") if getattr(self, name) is not None]


# What to do about an LPIPS loss without weights. Under +experiment=re10k (acid, dtu) `loss=[mse]` alone
# is not enough: the experiment's own `loss.lpips` block brings the loss back; `~loss.lpips` removes it.
NO_LPIPS_ADVICE = ("a directory holding vgg16.pth and vgg.pth (docs/training.md, 'Weights you bring'), or no LPIPS loss: add "
                   "~loss.lpips to the command line")


def check_losses(cfg: LossCfg) -> None:
    """At least one loss, and weights for the LPIPS loss (ConfigError otherwise)."""
    if not cfg.enabled():
        raise ConfigError("loss", {}, "at least one loss, e.g. loss=[mse] or loss=[mse,lpips]")
    if cfg.lpips is not None and cfg.lpips.weights is None:
        raise ConfigError("loss.lpips.weights", None, NO_LPIPS_ADVICE)
