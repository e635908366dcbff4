"""Typed config of the splatting decoder (`fabric_mvsplat/configs/model/decoder/splatting_cuda.yaml`)."""

from dataclasses import dataclass
from typing import Literal


@dataclass
class DecoderSplattingCfg:
    # The original's name for this decoder, kept so its command lines work; it renders on CPU too (backend).
    name: Literal["splatting_cuda"] = "splatting_cuda"
    # auto: gsplat on CUDA, the compiled CPU rasterizer on CPU (the pure-PyTorch one if it cannot be built),
    # the pure-PyTorch tiled rasterizer elsewhere. cpu: the compiled one; torch: always the pure-PyTorch one.
    backend: Literal["auto", "gsplat", "cpu", "torch"] = "auto"
    # false (the original renderer): project with cx = W/2, cy = H/2 and the focal length of the edge-midpoint
    # field of view; true: project with the real cx, cy and focal lengths.
    use_principal_point: bool = False
