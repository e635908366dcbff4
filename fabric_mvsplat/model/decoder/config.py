"""Typed config of the splatting decoder (`fabric_mvsplat/configs/model/decoder/splatting_cuda.yaml`)."""

from dataclasses import dataclass
from typing import Literal


@dataclass
class DecoderSplattingCfg:
    # The original's name for this decoder, kept so its command lines work; it renders on CPU too (backend).
    name: Literal["splatting_cuda"] = "splatting_cuda"
    # auto: gsplat on CUDA, the pure-PyTorch tiled rasterizer otherwise.
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    # false (the original renderer): project with cx = W/2, cy = H/2 and the focal length of the edge-midpoint
    # field of view; true: project with the real cx, cy and focal lengths.
    use_principal_point: bool = False
