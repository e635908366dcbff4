"""Write renders to disk: PNG images and H.264 mp4 videos (test mode, demo, users).

Videos go through the ffmpeg binary that imageio-ffmpeg ships (installed with moviepy), so
no system ffmpeg is needed. Settings follow the original's test videos: libx264, yuv420p,
crf 21.
"""

import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """[..., 3, H, W] float in [0, 1] -> [..., H, W, 3] uint8 (clipped, then truncated like
    the original's `prep_image`, so saved PNGs match its files bit for bit)."""
    if not images.is_floating_point() or images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(
            f"expected float RGB images shaped [..., 3, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    quantised = (images.detach().clip(min=0, max=1) * 255).to(torch.uint8)
    return quantised.movedim(-3, -1).cpu().numpy()


def save_image(image: Tensor, path: str | Path) -> None:
    """[3, H, W] float in [0, 1] -> PNG at `path` (parent directories created)."""
    if image.ndim != 3:
        raise ValueError(f"save_image expects one [3, H, W] image, got shape {tuple(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path, format="PNG")


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> even H and W by repeating the last row/column (yuv420p needs it)."""
    _, height, width, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def save_video(frames: Tensor, path: str | Path, fps: int = 30) -> None:
    """[T, 3, H, W] float in [0, 1] -> H.264 mp4 (yuv420p) at `path`; odd sizes padded by 1 px."""
    import imageio_ffmpeg  # imported lazily: only video writing needs it

    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(
            f"save_video expects frames shaped [T, 3, H, W] with T >= 1, got {tuple(frames.shape)}"
        )
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pixels = np.ascontiguousarray(_pad_to_even(to_uint8(frames)))
    _, height, width, _ = pixels.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "21", "-movflags", "+faststart",
        str(path),
    ]  # fmt: skip
    result = subprocess.run(command, input=pixels.tobytes(), capture_output=True)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"ffmpeg could not write video {path} (exit {result.returncode}): {message}")
