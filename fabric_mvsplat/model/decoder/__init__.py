"""Splatting decoder: gsplat on CUDA, a tiled pure-PyTorch rasterizer elsewhere, the original's conventions."""

from .config import DecoderSplattingCudaCfg
from .decoder import DecoderSplatting
from .rendering import DecoderOutput, DepthMode, render, resolve_backend

__all__ = ["DecoderOutput", "DecoderSplatting", "DecoderSplattingCudaCfg", "DepthMode", "render", "resolve_backend"]
