"""Splatting decoder: gsplat on CUDA, a tiled pure-PyTorch rasterizer elsewhere, the original's conventions."""

from .config import DecoderSplattingCfg
from .decoder import DecoderSplatting
from .rendering import Cameras, DecoderOutput, DepthMode, render, resolve_backend

__all__ = ["Cameras", "DecoderOutput", "DecoderSplatting", "DecoderSplattingCfg", "DepthMode", "render", "resolve_backend"]
