"""DecoderSplatting: the decoder module the model holds (no parameters, no state_dict entries)."""

from typing import Sequence

import torch
from torch import Tensor, nn

from ...types import Gaussians
from .config import DecoderSplattingCfg
from .rendering import DecoderOutput, DepthMode, render, resolve_backend


class DecoderSplatting(nn.Module):
    def __init__(self, cfg: DecoderSplattingCfg, background_color: Sequence[float]) -> None:
        super().__init__()
        self.cfg = cfg
        # Fail at start-up, not at the first render: 'gsplat' needs CUDA, unknown names are rejected.
        resolve_backend(cfg.backend, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        # Non-persistent like the original: checkpoints hold encoder weights only.
        self.register_buffer("background_color", torch.tensor(list(background_color), dtype=torch.float32),
                             persistent=False)

    def forward(self, gaussians: Gaussians, extrinsics: Tensor, intrinsics: Tensor, near: Tensor, far: Tensor,
                image_shape: tuple[int, int], depth_mode: DepthMode | None = None) -> DecoderOutput:
        return render(gaussians, (extrinsics, intrinsics, near, far), image_shape, depth_mode,
                      backend=self.cfg.backend, use_principal_point=self.cfg.use_principal_point,
                      background_color=self.background_color)
