"""Typed config of the data layer (`fabric_mvsplat/configs/dataset/*.yaml`, `fabric_mvsplat/configs/dataset/view_sampler/*.yaml`,
`data_loader.*` in `fabric_mvsplat/configs/main.yaml`)."""

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError

# Frames (and depth maps) whose header declares more pixels are refused before decoding: a decompression bomb is a
# small file that decodes to gigabytes. 40 Mpx admits 8K frames (33 Mpx). dataset.max_image_pixels for training and
# test mode; the render command's own images and chunk scenes use this value.
MAX_IMAGE_PIXELS = 40_000_000


def check_num_context_views(value: int) -> None:
    """The one check of the context-view count, for every sampler that picks context views."""
    if value < 2:
        raise ConfigError("num_context_views", value,
                          "at least 2: the cost-volume encoder matches every context view against another")


@dataclass
class ViewSamplerBoundedCfg:
    name: Literal["bounded"] = "bounded"
    num_context_views: int = 2
    num_target_views: int = 1
    min_distance_between_context_views: int = 2
    max_distance_between_context_views: int = 6
    min_distance_to_context_views: int = 0
    warm_up_steps: int = 0
    initial_min_distance_between_context_views: int = 2
    initial_max_distance_between_context_views: int = 6
    # The original keeps pixelSplat's bug: the context gap always equals the (scheduled) minimum
    # gap. false samples the gap uniformly in [min, max] (pixelSplat after dea327d, DepthSplat).
    keep_min_gap_bug: bool = True

    def __post_init__(self) -> None:
        check_num_context_views(self.num_context_views)
        if self.num_target_views < 1:
            raise ConfigError("num_target_views", self.num_target_views, "an integer >= 1")
        if self.warm_up_steps < 0:
            raise ConfigError("warm_up_steps", self.warm_up_steps, "an integer >= 0")


@dataclass
class ViewSamplerEvaluationCfg:
    name: Literal["evaluation"] = "evaluation"
    index_path: str = "assets/evaluation_index_re10k.json"
    num_context_views: int = 2

    def __post_init__(self) -> None:
        check_num_context_views(self.num_context_views)


@dataclass
class ViewSamplerArbitraryCfg:
    name: Literal["arbitrary"] = "arbitrary"
    num_context_views: int = 2
    num_target_views: int = 1
    context_views: list[int] | None = None
    target_views: list[int] | None = None

    def __post_init__(self) -> None:
        check_num_context_views(self.num_context_views)


@dataclass
class ViewSamplerAllCfg:
    name: Literal["all"] = "all"


ViewSamplerCfg = ViewSamplerBoundedCfg | ViewSamplerEvaluationCfg | ViewSamplerArbitraryCfg | ViewSamplerAllCfg


@dataclass
class DatasetCfg:
    """`fabric_mvsplat/configs/dataset/re10k.yaml`; ACID and DTU use the same reader with other roots."""

    view_sampler: ViewSamplerCfg
    name: Literal["re10k", "acid", "dtu", "synthetic"] = "re10k"
    roots: list[str] = field(default_factory=lambda: ["datasets/re10k"])
    make_baseline_1: bool = True
    augment: bool = True
    image_shape: list[int] = field(default_factory=lambda: [180, 320])
    background_color: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    cameras_are_circular: bool = False
    baseline_epsilon: float = 1e-3
    max_fov: float = 100.0
    skip_bad_shape: bool = True
    # Frames must have this (H, W) when skip_bad_shape is on (RE10K/ACID frames are 360x640).
    original_image_shape: list[int] = field(default_factory=lambda: [360, 640])
    # Added: frames (and depth maps) above this many pixels are skipped as corrupt before decoding.
    max_image_pixels: int = MAX_IMAGE_PIXELS
    near: float = -1.0
    far: float = -1.0
    baseline_scale_bounds: bool = True
    shuffle_val: bool = True
    test_len: int = -1
    test_chunk_interval: int = 1
    test_times_per_scene: int = 1
    overfit_to_scene: str | None = None
    # Added (the demo): a folder; when dataset.roots[0] is this folder and it is absent or holds no files,
    # the synthetic dataset is generated into it. Any other root is never filled with synthetic data.
    synthetic_if_missing: str | None = None

    def __post_init__(self) -> None:
        if len(self.image_shape) != 2 or min(self.image_shape) < 1:
            raise ConfigError("image_shape", self.image_shape, "[height, width] with positive integers")
        if len(self.original_image_shape) != 2:
            raise ConfigError("original_image_shape", self.original_image_shape, "[height, width]")
        if not self.roots:
            raise ConfigError("roots", self.roots, "a non-empty list of dataset directories")
        if self.test_chunk_interval < 1:
            raise ConfigError("test_chunk_interval", self.test_chunk_interval, "an integer >= 1")
        if self.max_image_pixels < 1:
            raise ConfigError("max_image_pixels", self.max_image_pixels, "a positive number of pixels per frame")
        if self.test_times_per_scene < 1:
            raise ConfigError("test_times_per_scene", self.test_times_per_scene, "an integer >= 1")
        if self.near != -1.0 and self.far != -1.0 and not 0 < self.near < self.far:
            raise ConfigError("near", self.near, f"0 < near < far (far = {self.far}), or -1 for the default")


@dataclass
class DataLoaderStageCfg:
    num_workers: int = 0
    persistent_workers: bool = True
    batch_size: int = 1
    # null as in the original: the stream's order then derives from the root `seed` alone.
    seed: int | None = 1234

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size", self.batch_size, "an integer >= 1")
        if self.num_workers < 0:
            raise ConfigError("num_workers", self.num_workers, "an integer >= 0")


@dataclass
class DataLoaderCfg:
    """Per stage, main.yaml's values (tests/test_config_defaults.py keeps the two equal)."""

    train: DataLoaderStageCfg = field(default_factory=lambda: DataLoaderStageCfg(num_workers=10, batch_size=4))
    test: DataLoaderStageCfg = field(default_factory=lambda: DataLoaderStageCfg(
        num_workers=4, persistent_workers=False, seed=2345))
    val: DataLoaderStageCfg = field(default_factory=lambda: DataLoaderStageCfg(num_workers=1, seed=3456))
