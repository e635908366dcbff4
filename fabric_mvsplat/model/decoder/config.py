"""Typed config of the splatting decoder (`fabric_mvsplat/configs/model/decoder/splatting_cuda.yaml`)."""

from dataclasses import dataclass
from typing import Literal


@dataclass
class DecoderSplattingCfg:
    # The original's name for this decoder, kept so its command lines work; it renders on CPU too (backend).
    name: Literal["splatting_cuda"] = "splatting_cuda"
    # auto: gsplat on CUDA, the pure-PyTorch tiled rasterizer otherwise.
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    # true: project with the real cx, cy; false: cx = W/2, cy = H/2 as the original renderer.
    use_principal_point: bool = True
