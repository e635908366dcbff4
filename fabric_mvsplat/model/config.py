"""Typed config of the model: `model.encoder` and `model.decoder`."""

from dataclasses import dataclass

from .decoder.config import DecoderSplattingCfg
from .encoder.config import EncoderCostVolumeCfg


@dataclass
class ModelCfg:
    encoder: EncoderCostVolumeCfg
    decoder: DecoderSplattingCfg
