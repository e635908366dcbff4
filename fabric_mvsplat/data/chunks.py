"""The chunk dataset: which scenes exist (index.json per root) and how one scene becomes one example.

An example is the original's un-batched structure (without the batch dimension):
``{"context": views, "target": views, "scene": key}``, views = extrinsics [V,4,4] c2w OpenCV,
intrinsics [V,3,3] normalised, image [V,3,H,W] in [0,1], near/far [V], index [V] int64.
"""

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..camera import field_of_view
from ..errors import DatasetError
from .chunk_io import (DEPTH_KEY, ChunkReadError, camera_problem, check_scene, decode_depth, read_chunk,
                       vector_to_cameras)
from .config import DatasetCfg
from .preprocess import DEFAULT_FAR, DEFAULT_NEAR, Preprocessing, preprocess_views  # noqa: F401 (re-exported)
from .shims import scaled_shape
from .view_sampler import SceneRejected, Stage, get_view_sampler

# Reasons that mean broken data (warned about, logged as data/skipped_scenes); the others are filters.
CORRUPT_REASONS = ("corrupt_chunk", "corrupt_scene", "invalid_cameras", "undecodable_image", "undecodable_depth",
                   "missing_from_chunk", "image_too_large")
# Reasons the evaluation index gives (reported apart from the filters in test mode).
INDEX_REASONS = ("not_in_index", "null_in_index")


@dataclass(frozen=True)
class SceneRef:
    chunk: str  # path of the .torch file
    key: str


def data_stage(stage: Stage) -> str:
    """On disk there are only `train` and `test`; validation reads `test` like the original."""
    return "train" if stage == "train" else "test"


def _read_index(stage_dir: Path) -> dict[str, str]:
    index_path = stage_dir / "index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} is missing: every dataset stage directory needs an index.json "
                                f"{{scene key: chunk file}} (write_chunks and the converters create it)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path} is not valid JSON: {error}") from error
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} must map scene keys to chunk file names, got {type(index).__name__}")
    return index


def check_dataset_roots(dataset_cfg: DatasetCfg, stage: Stage) -> None:
    """Fail at start-up, naming the root, when a stage has no chunks or its index points to missing files."""
    stages = ("train", "test") if dataset_cfg.overfit_to_scene else (data_stage(stage),)
    for root in dataset_cfg.roots:
        for name in stages:
            stage_dir = Path(root) / name
            if dataset_cfg.overfit_to_scene and not stage_dir.is_dir():
                continue
            chunks = sorted(stage_dir.glob("*.torch")) if stage_dir.is_dir() else []
            if not chunks:
                raise DatasetError(
                    f"dataset root {root!r} has no chunks in {stage_dir} (expected NNNNNN.torch files + "
                    f"index.json); point dataset.roots at a converted dataset (docs/data.md)")
            index = _read_index(stage_dir)
            missing = sorted(file for file in set(index.values()) if not (stage_dir / file).is_file())
            if missing:
                raise DatasetError(f"{stage_dir / 'index.json'} points to missing chunk files "
                                        f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; regenerate the index")


def list_scenes(dataset_cfg: DatasetCfg, stage: Stage) -> list[SceneRef]:
    """Scenes in chunk order (chunk files sorted per root, roots in order), in index order inside a chunk.

    Test stage keeps every `test_chunk_interval`-th chunk; `overfit_to_scene` keeps only that scene.
    """
    check_dataset_roots(dataset_cfg, stage)
    stages = ("test", "train") if dataset_cfg.overfit_to_scene else (data_stage(stage),)
    chunks: list[tuple[Path, list[str]]] = []
    for root in dataset_cfg.roots:
        for name in stages:
            stage_dir = Path(root) / name
            if not stage_dir.is_dir():
                continue
            keys_by_file: dict[str, list[str]] = {}
            for key, file in _read_index(stage_dir).items():
                keys_by_file.setdefault(file, []).append(key)
            chunks += [(stage_dir / file, keys_by_file[file]) for file in sorted(keys_by_file)]
    if stage == "test" and not dataset_cfg.overfit_to_scene:
        chunks = chunks[:: dataset_cfg.test_chunk_interval]
    scenes = [SceneRef(str(path), key) for path, keys in chunks for key in keys]
    if dataset_cfg.overfit_to_scene:
        scenes = [scene for scene in scenes if scene.key == dataset_cfg.overfit_to_scene][:1]
        if not scenes:
            raise DatasetError(f"dataset.overfit_to_scene={dataset_cfg.overfit_to_scene!r} is in no index.json "
                               f"under {dataset_cfg.roots}")
    return scenes


class ChunkCache:
    """Keeps the last chunk read (scenes are visited chunk by chunk); remembers unreadable files."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.scenes: dict[str, dict] = {}
        self.unreadable: dict[str, str] = {}

    def scene(self, ref: SceneRef) -> dict:
        if ref.chunk in self.unreadable:
            raise SceneRejected("corrupt_chunk", f"scene {ref.key!r}: {self.unreadable[ref.chunk]}")
        if ref.chunk != self.path:
            try:
                chunk = read_chunk(Path(ref.chunk))
            except ChunkReadError as error:
                self.unreadable[ref.chunk] = str(error)
                raise SceneRejected("corrupt_chunk", f"scene {ref.key!r}: {error}") from None
            self.path, self.scenes = ref.chunk, {str(scene.get("key")): scene for scene in chunk}
        if ref.key not in self.scenes:
            raise SceneRejected("missing_from_chunk", f"scene {ref.key!r} is in index.json but not in {ref.chunk}")
        return self.scenes[ref.key]


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than dataset.max_image_pixels (a decompression bomb, or a
    frame far larger than any training needs): refused before it is decoded."""


def open_within_budget(data: Tensor, max_pixels: int) -> Image.Image:
    """Encoded bytes -> a PIL image that has read only its header, or ImageTooLarge when the header declares more
    than `max_pixels` pixels: a few kB of JPEG can declare gigabytes of pixels, so the size is checked first."""
    with warnings.catch_warnings():  # Pillow's own, looser check warns from 89 Mpx: ours is the one that decides
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data.numpy().tobytes()))
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(str(error)) from None
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(f"{image.width}x{image.height} = {image.width * image.height:,} pixels > "
                            f"dataset.max_image_pixels={max_pixels:,}")
    return image


def decode_frame(data: Tensor, max_pixels: int) -> Image.Image:
    """Encoded bytes -> a fully decoded RGB PIL image (truncated data raises here, not later); ImageTooLarge
    before decoding anything above the pixel budget."""
    image = open_within_budget(data, max_pixels)
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


class ExampleBuilder:
    """One scene dict (+ a per-scene generator and the training step) -> one example, or SceneRejected."""

    def __init__(self, cfg: DatasetCfg, stage: Stage) -> None:
        self.cfg, self.stage = cfg, stage
        self.sampler = get_view_sampler(cfg.view_sampler, stage, cfg.overfit_to_scene is not None,
                                        cfg.cameras_are_circular)
        self.preprocessing = Preprocessing.from_cfg(cfg)
        self.shape = self.preprocessing.image_shape

    def build(self, scene: dict, chunk: str, generator: torch.Generator, step: int, name: str | None = None) -> dict:
        """`name` (default: the scene key) names the example and is the key the view sampler looks up: run r
        of a scene under dataset.test_times_per_scene > 1 is `<key>_<r:02d>`, the DTU index's keys."""
        cfg = self.cfg
        try:
            check_scene(scene)
        except ValueError as error:
            raise SceneRejected("corrupt_scene", f"{chunk}: {error}") from None
        key = scene["key"]
        problem = camera_problem(scene["cameras"])
        if problem is not None:
            raise SceneRejected("invalid_cameras", f"{chunk}: scene {key!r}: {problem}")
        extrinsics, intrinsics = vector_to_cameras(scene["cameras"])
        context, target = self.sampler.sample(name or key, len(extrinsics), generator, step)
        fov = field_of_view(intrinsics.double()).rad2deg()
        if (fov > cfg.max_fov).any():
            raise SceneRejected("max_fov", f"scene {key!r} has a {fov.max():.1f} deg field of view "
                                f"> dataset.max_fov={cfg.max_fov}")
        frames = {}
        for frame in torch.cat([context, target]).unique().tolist():
            try:
                frames[frame] = decode_frame(scene["images"][frame], cfg.max_image_pixels)
            except ImageTooLarge as error:
                raise SceneRejected("image_too_large", f"{chunk}: scene {key!r} frame {frame}: {error}") from None
            except Exception as error:
                raise SceneRejected("undecodable_image", f"{chunk}: scene {key!r} frame {frame}: "
                                    f"{type(error).__name__}: {error}") from None
            shape = (frames[frame].height, frames[frame].width)
            if cfg.skip_bad_shape and shape != tuple(cfg.original_image_shape):
                raise SceneRejected("bad_shape", f"scene {key!r} frame {frame} is {shape}, "
                                    f"dataset.original_image_shape is {cfg.original_image_shape}")
        # The original draws the flip after sampling, with the same per-scene generator: rand < 0.5 keeps.
        flip = self.stage == "train" and cfg.augment and bool(torch.rand((), generator=generator) >= 0.5)
        prepared = preprocess_views(frames, extrinsics, intrinsics, context, target, self.preprocessing,
                                    flip=flip, key=key)
        views = {"context": prepared.context, "target": prepared.target}
        # Ground-truth depth (our synthetic chunks) is only scored, never trained on: val/test carry it, the
        # targets' for the depth scores, the contexts' for the plane sweep's reach (debug/parallax.py).
        if DEPTH_KEY in scene and self.stage != "train":
            for side, indices in (("context", context), ("target", target)):
                views[side]["depth"] = self._depths(scene, chunk, indices, frames) / prepared.scale
        return {**views, "scene": name or key}

    def _depths(self, scene: dict, chunk: str, indices: Tensor, frames: dict[int, Image.Image]) -> Tensor:
        """The frames' z-depth [V, H, W] (world units, 0 = unknown), resized (nearest: never a depth
        between two surfaces) and cropped exactly like the images."""
        depths = scene[DEPTH_KEY]
        if not isinstance(depths, list) or len(depths) != len(scene["images"]):
            raise SceneRejected("corrupt_scene", f"{chunk}: scene {scene['key']!r}: {DEPTH_KEY!r} must be a list "
                                f"of {len(scene['images'])} PNG byte tensors")
        maps = []
        for i in indices.tolist():
            try:
                open_within_budget(depths[i], self.cfg.max_image_pixels)
                depth = decode_depth(depths[i])
            except ImageTooLarge as error:
                raise SceneRejected("image_too_large", f"{chunk}: scene {scene['key']!r} depth {i}: {error}") from None
            except Exception as error:
                raise SceneRejected("undecodable_depth", f"{chunk}: scene {scene['key']!r} depth {i}: "
                                    f"{type(error).__name__}: {error}") from None
            image_shape = (frames[i].height, frames[i].width)
            if depth.shape != image_shape:
                raise SceneRejected("corrupt_scene", f"{chunk}: scene {scene['key']!r} depth {i} is {depth.shape}, "
                                    f"its image {image_shape}")
            maps.append(rescale_and_crop_depth(depth, self.shape))
        return torch.from_numpy(np.stack(maps))


def rescale_and_crop_depth(depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 [H, W] -> [h, w]: the images' resize-to-cover and center crop, nearest-neighbour sampled."""
    h_out, w_out = shape
    h_scaled, w_scaled = scaled_shape(depth.shape, shape)
    if (h_scaled, w_scaled) != depth.shape:
        depth = np.asarray(Image.fromarray(depth).resize((w_scaled, h_scaled), Image.NEAREST))
    row, col = (h_scaled - h_out) // 2, (w_scaled - w_out) // 2
    return np.ascontiguousarray(depth[row: row + h_out, col: col + w_out], dtype=np.float32)


def warn_skip(error: SceneRejected) -> None:
    if error.reason in CORRUPT_REASONS:
        warnings.warn(f"skipping {error}", RuntimeWarning, stacklevel=2)
