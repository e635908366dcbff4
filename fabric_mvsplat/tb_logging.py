"""Rank-zero TensorBoard logging (tensorboardX). Named tb_logging so it does not shadow the stdlib.

Only global rank 0 creates a writer (and so the event file); on other ranks every method does nothing.
Averaging over ranks happens in the loop, before values reach this writer.
"""

from pathlib import Path

import torch
from torch import Tensor


class RankZeroWriter:
    def __init__(self, log_dir: Path, is_rank_zero: bool, video_fps: int = 30, purge_step: int | None = None) -> None:
        """purge_step: on resume, TensorBoard drops the earlier run's events at this step and later, so every
        curve keeps one value per step (the resumed run writes them again)."""
        self.video_fps = video_fps
        self.log_dir = Path(log_dir)
        self.writer = None
        if is_rank_zero:
            from tensorboardX import SummaryWriter

            # The file name holds the start time in seconds; the suffix keeps a resume within the same second
            # from overwriting the earlier file, and sorts it after that file as TensorBoard's purge needs.
            self.writer = SummaryWriter(logdir=str(log_dir), purge_step=purge_step,
                                        filename_suffix=f".from_step_{purge_step or 0:012d}")

    def scalars(self, values: dict[str, float | Tensor], step: int) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), global_step=step)

    def histogram(self, name: str, values: Tensor, step: int) -> None:
        """values: any shape; non-finite values are left out (TensorBoard's histogram cannot hold them)."""
        if self.writer is not None:
            values = values.detach().float().flatten().cpu()
            values = values[torch.isfinite(values)]
            if values.numel():
                self.writer.add_histogram(name, values.numpy(), global_step=step)

    def image(self, name: str, image: Tensor, step: int) -> None:
        """image: [3, H, W] float in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(name, image.detach().float().clamp(0, 1).cpu().numpy(), global_step=step)

    def video(self, name: str, video: Tensor, step: int) -> None:
        """video: [T, 3, H, W] float in [0, 1]; encoded as an animated GIF by tensorboardX (moviepy)."""
        if self.writer is not None:
            frames = (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            self.writer.add_video(name, frames[None].numpy(), global_step=step, fps=self.video_fps)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
