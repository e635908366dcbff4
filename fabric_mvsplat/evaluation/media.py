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


def find_ffmpeg() -> str | None:
    """The ffmpeg binary imageio-ffmpeg ships, else one on PATH, else None."""
    import shutil

    try:
        import imageio_ffmpeg  # imported lazily: only video writing needs it

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


class VideoWriter:
    """Frames in, one video file out, a chunk of frames at a time (a long video never sits in memory whole).

    `.mp4` (H.264, yuv420p, crf 21) through ffmpeg's stdin; `.gif` through Pillow (palette frames, about
    H x W bytes each, kept until `close`). Odd sizes are padded by 1 px for yuv420p.
    """

    def __init__(self, path: str | Path, fps: int = 30, ffmpeg: str | None = None) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path, self.fps, self.frames_written = Path(path), fps, 0
        if self.path.suffix not in (".mp4", ".gif"):
            raise ValueError(f"video {self.path}: expected a .mp4 or .gif file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ffmpeg = ffmpeg or (find_ffmpeg() if self.path.suffix == ".mp4" else None)
        if self.path.suffix == ".mp4" and self.ffmpeg is None:
            raise RuntimeError(f"no ffmpeg binary to write {self.path} (pip install imageio-ffmpeg); write a .gif")
        self.process: subprocess.Popen | None = None
        self.gif_frames: list[Image.Image] = []

    def write(self, frames: Tensor) -> None:
        """[T, 3, H, W] float in [0, 1]."""
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise ValueError(f"video frames must be shaped [T, 3, H, W] with T >= 1, got {tuple(frames.shape)}")
        pixels = np.ascontiguousarray(_pad_to_even(to_uint8(frames)))
        if self.path.suffix == ".gif":
            self.gif_frames += [Image.fromarray(frame).quantize(colors=256) for frame in pixels]
        else:
            if self.process is None:
                _, height, width, _ = pixels.shape
                command = [
                    self.ffmpeg, "-y", "-loglevel", "error",
                    "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(self.fps), "-i", "-",
                    "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "21", "-movflags", "+faststart",
                    str(self.path),
                ]  # fmt: skip
                self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                self.process.stdin.write(pixels.tobytes())
            except BrokenPipeError:
                self.close()  # raises with ffmpeg's message
        self.frames_written += frames.shape[0]

    def close(self) -> None:
        if self.path.suffix == ".gif":
            if self.gif_frames:
                self.gif_frames[0].save(self.path, save_all=True, append_images=self.gif_frames[1:],
                                        duration=round(1000 / self.fps), loop=0)
                self.gif_frames = []
            return
        if self.process is None:
            return
        process, self.process = self.process, None
        _, stderr = process.communicate()
        if process.returncode != 0:
            message = stderr.decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"ffmpeg could not write video {self.path} (exit {process.returncode}): {message}")

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_video(frames: Tensor, path: str | Path, fps: int = 30) -> None:
    """[T, 3, H, W] float in [0, 1] -> H.264 mp4 (yuv420p) at `path`; odd sizes padded by 1 px."""
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(
            f"save_video expects frames shaped [T, 3, H, W] with T >= 1, got {tuple(frames.shape)}"
        )
    with VideoWriter(path, fps) as writer:
        writer.write(frames)
