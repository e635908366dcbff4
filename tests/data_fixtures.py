"""Tiny chunk datasets for the data tests, written with our own chunk writer (no tests in this file).

Each scene: a camera sliding sideways (+x) and slightly forward (+z) in OpenCV convention, looking at a
smooth random background with one bright blob drawn where a fixed world point projects, so tests can
check that the batch's cameras project that point onto the blob.
"""

from pathlib import Path

import numpy as np
import torch

from fabric_mvsplat.data.chunk_io import cameras_to_vector, encode_image, write_chunks
from fabric_mvsplat.data.config import DatasetCfg, ViewSamplerBoundedCfg

POINT = torch.tensor([0.3, -0.1, 4.0], dtype=torch.float64)  # world point drawn as a blob in every frame


def scene_cameras(num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(world-to-camera [V, 4, 4], normalised K [V, 3, 3]) with square pixels."""
    fx = 0.8
    k = torch.tensor([[fx, 0, 0.5], [0, fx * width / height, 0.5], [0, 0, 1]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    c2w[:, 0, 3] = torch.arange(num_frames) * 0.05
    c2w[:, 2, 3] = torch.arange(num_frames) * 0.03
    angle = torch.arange(num_frames) * 0.005  # a slight pan about y keeps rotations non-trivial
    c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = angle.cos(), angle.sin(), -angle.sin(), angle.cos()
    return c2w.inverse(), k.repeat(num_frames, 1, 1)


def project(point: torch.Tensor, w2c: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """World point [3] -> normalised image coordinates [V, 2] (x right, y down, in [0, 1] inside the frame)."""
    camera = (w2c[:, :3, :3] @ point.to(w2c.dtype) + w2c[:, :3, 3])
    pixel = (k.to(w2c.dtype) @ camera.unsqueeze(-1)).squeeze(-1)
    return pixel[:, :2] / pixel[:, 2:]


def frame_image(rng: np.random.Generator, height: int, width: int, uv: torch.Tensor) -> np.ndarray:
    """Smooth dark random background + a bright Gaussian blob centred at normalised uv."""
    coarse = rng.uniform(0, 90, size=(3, 4, 3))
    ys, xs = np.linspace(0, 2, height), np.linspace(0, 3, width)
    y0, x0 = np.clip(ys.astype(int), 0, 1), np.clip(xs.astype(int), 0, 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    base = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
            + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    cy, cx = float(uv[1]) * height, float(uv[0]) * width
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    blob = 160 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
    return np.clip(base + blob[..., None], 0, 255).astype(np.uint8)


def make_scene(key: str, num_frames: int, height: int, width: int, seed: int, fmt: str = "png") -> dict:
    rng = np.random.default_rng(seed)
    w2c, k = scene_cameras(num_frames, height, width)
    uv = project(POINT, w2c, k)
    images = [encode_image(frame_image(rng, height, width, uv[i]), format=fmt) for i in range(num_frames)]
    return {"url": f"https://example.com/{key}", "timestamps": torch.arange(num_frames) * 33_000,
            "cameras": cameras_to_vector(w2c, k), "images": images, "key": key}


def make_split(stage_dir: Path, num_scenes: int, num_frames: int = 12, height: int = 18, width: int = 32,
               scenes_per_chunk: int = 3, prefix: str = "scene", fmt: str = "png") -> list[str]:
    """Write num_scenes scenes, about scenes_per_chunk per chunk; return their keys."""
    scenes = [make_scene(f"{prefix}{i:03d}", num_frames, height, width, seed=i, fmt=fmt) for i in range(num_scenes)]
    scene_bytes = sum(image.numel() for image in scenes[0]["images"])
    write_chunks(scenes, stage_dir, target_bytes=scene_bytes * scenes_per_chunk - 1)
    return [scene["key"] for scene in scenes]


def dataset_cfg(root: Path, height: int = 18, width: int = 32, image_shape=(16, 16), **overrides) -> DatasetCfg:
    sampler = overrides.pop("view_sampler", None) or ViewSamplerBoundedCfg(
        num_target_views=2, min_distance_between_context_views=3, max_distance_between_context_views=5)
    return DatasetCfg(view_sampler=sampler, roots=[str(root)], image_shape=list(image_shape),
                      original_image_shape=[height, width], near=1.0, far=100.0, **overrides)
