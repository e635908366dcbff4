"""Typed config of the losses (`fabric_mvsplat/configs/loss/{mse,lpips,depth}.yaml`)."""

from dataclasses import dataclass

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


@dataclass
class LossCfg:
    """`loss:` after composition is a dict keyed by loss name; absent losses are None."""

    mse: LossMseCfg | None = None
    lpips: LossLpipsCfg | None = None
    depth: LossDepthCfg | None = None
