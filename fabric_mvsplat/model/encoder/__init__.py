"""MVSplat cost-volume encoder; module names reproduce the original's state_dict keys."""

from .config import EncoderCostVolumeCfg
from .encoder import EncoderCostVolume
from .pretrained import load_encoder_weights, load_unimatch_backbone

__all__ = ["EncoderCostVolume", "EncoderCostVolumeCfg", "load_encoder_weights", "load_unimatch_backbone"]
