"""Typed config of the splatting decoder (`fabric_mvsplat/configs/model/decoder/splatting_cuda.yaml`)."""

from dataclasses import dataclass
from typing import Literal


@dataclass
class DecoderSplattingCudaCfg:
    name: Literal["splatting_cuda"] = "splatting_cuda"
    # auto: gsplat on CUDA, the compiled CPU rasterizer on CPU (the pure-PyTorch one if it cannot be built),
    # the pure-PyTorch tiled rasterizer elsewhere. cpu: the compiled one; torch: always the pure-PyTorch one.
    backend: Literal["auto", "gsplat", "cpu", "torch"] = "auto"
    # true: project with the real cx, cy; false: cx = W/2, cy = H/2 as the original renderer.
    use_principal_point: bool = True
