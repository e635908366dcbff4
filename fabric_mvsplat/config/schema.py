"""The typed root config and the one function that turns Hydra's DictConfig into it.

`load_config` runs once at start-up, before any work: an unknown key, a value of the wrong type or an
impossible value raises `ConfigError` naming the full key path (`trainer.max_steps`), the value and
what is allowed. The converter is deliberately small: it understands int, float (accepts int), bool,
str, None/Optional, Literal, list[T], dict, nested dataclasses, and unions (unions of dataclasses are
chosen by their `name` field, other unions by the first member that accepts the value).
"""

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch
from omegaconf import DictConfig, OmegaConf

from ..data.config import DataLoaderCfg, DatasetCfg
from ..errors import ConfigError
from ..model.config import ModelCfg
from ..metrics.lpips import find_weight_files
from ..model.encoder.config import VisualizerCfg
from ..model.loss_config import LossCfg, check_losses


@dataclass
class OptimizerCfg:
    lr: float = 2e-4
    warm_up_steps: int = 2000  # LinearLR warm-up length, used only when cosine_lr is false
    cosine_lr: bool = True

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError("lr", self.lr, "a learning rate > 0")
        if self.warm_up_steps < 1:
            raise ConfigError("warm_up_steps", self.warm_up_steps, "an integer >= 1")


@dataclass
class CheckpointingCfg:
    load: str | None = None  # a checkpoint file, or "latest": the newest in output_dir (fresh start when none)
    every_n_train_steps: int = 20000
    save_top_k: int = -1
    pretrained_model: str | None = None  # declared but unused, as in the original (warns when set)
    resume: bool = True
    allow_unsafe_load: bool = False

    def __post_init__(self) -> None:
        if self.every_n_train_steps < 1:
            raise ConfigError("every_n_train_steps", self.every_n_train_steps, "an integer >= 1")
        if self.save_top_k == 0 or self.save_top_k < -1:
            raise ConfigError("save_top_k", self.save_top_k, "-1 (keep all) or an integer >= 1")


@dataclass
class ProfileCfg:
    """Record optimizer steps [start, start + steps) with torch.profiler (rank 0)."""

    start: int = 10
    steps: int = 5

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ConfigError("start", self.start, "an integer >= 0 (the first profiled step)")
        if self.steps < 1:
            raise ConfigError("steps", self.steps, "an integer >= 1 (number of profiled steps)")


@dataclass
class TrainerCfg:
    max_steps: int = -1
    # An integer: every that many optimizer steps. A float in (0, 1]: that fraction of a pass over the
    # training scenes per rank, counted from the start of each pass (Lightning's meaning; see
    # `validation_interval_steps`). null: no validation.
    val_check_interval: int | float | None = 0.5
    gradient_clip_val: float | None = 0.5
    num_sanity_val_steps: int = 2
    num_nodes: int = 1
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    devices: int | str = "auto"
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    detect_anomaly: bool = False
    profile: ProfileCfg | None = None
    compile: bool = False
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step (Lightning's key)
    deterministic: bool = False  # torch's deterministic algorithms (and CUBLAS_WORKSPACE_CONFIG on CUDA)

    def __post_init__(self) -> None:
        if self.accumulate_grad_batches < 1:
            raise ConfigError("accumulate_grad_batches", self.accumulate_grad_batches,
                              "an integer >= 1 (micro-batches per optimizer step)")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("max_steps", self.max_steps, "-1 (no limit) or an integer >= 1")
        interval = self.val_check_interval
        if isinstance(interval, float) and not 0 < interval <= 1:
            raise ConfigError("val_check_interval", interval,
                              "a fraction of a pass over the training scenes in (0, 1] (a float), an integer "
                              "number of optimizer steps >= 1, or null for no validation")
        if isinstance(interval, int) and interval < 1:
            raise ConfigError("val_check_interval", interval,
                              "an integer number of optimizer steps >= 1, a fraction in (0, 1], or null")
        if self.gradient_clip_val is not None and not self.gradient_clip_val > 0:
            raise ConfigError("gradient_clip_val", self.gradient_clip_val, "a number > 0, or null for no clipping")
        if self.num_sanity_val_steps < 0:
            raise ConfigError("num_sanity_val_steps", self.num_sanity_val_steps, "an integer >= 0")
        if self.num_nodes < 1:
            raise ConfigError("num_nodes", self.num_nodes, "an integer >= 1")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ConfigError("devices", self.devices, "'auto', -1 (all) or a number of devices >= 1")
        if isinstance(self.devices, int) and (self.devices == 0 or self.devices < -1):
            raise ConfigError("devices", self.devices, "'auto', -1 (all) or a number of devices >= 1")


@dataclass
class TestCfg:
    output_path: str = "outputs/test"
    compute_scores: bool = False
    eval_time_skip_steps: int = 0
    save_image: bool = True
    save_video: bool = False
    save_gaussians: bool = False
    lpips_weights: str | None = None

    def __post_init__(self) -> None:
        if self.eval_time_skip_steps < 0:
            raise ConfigError("eval_time_skip_steps", self.eval_time_skip_steps, "an integer >= 0")


@dataclass
class TrainCfg:
    # log: the original's formula (log(far) for every Gaussian); log_clamped: log of z clamped to [near, far].
    depth_mode: Literal["depth", "log", "log_clamped", "disparity", "relative_disparity"] | None = None
    extended_visualization: bool = False
    print_log_every_n_steps: int = 1
    video_frames: int = 30

    def __post_init__(self) -> None:
        if self.print_log_every_n_steps < 1:
            raise ConfigError("print_log_every_n_steps", self.print_log_every_n_steps, "an integer >= 1")
        if self.video_frames < 2:
            raise ConfigError("video_frames", self.video_frames, "an integer >= 2")


@dataclass
class WatchdogCfg:
    """A training step, validation or checkpoint save that takes longer than the limit makes every rank write
    its threads' stacks to output_dir/hang/ and rank 0 name where each rank waits."""

    enabled: bool | None = None  # null: on when the run has more than one process
    timeout: float | None = None  # seconds; null: max(min_timeout, 20 x the median step so far)
    min_timeout: float = 300.0  # the automatic limit is never shorter (and until 3 steps are measured, 3 x this)
    exit_on_hang: bool = False  # after the report, end the process (exit code 124) instead of waiting on

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("timeout", self.timeout, "a number of seconds > 0, or null for the automatic limit")
        if not self.min_timeout > 0:
            raise ConfigError("min_timeout", self.min_timeout, "a number of seconds > 0")


@dataclass
class StallCfg:
    """Make one rank sleep before one step's forward: tries the watchdog on your cluster."""

    rank: int = 0
    step: int = 0
    seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.rank < 0 or self.step < 0 or not self.seconds > 0:
            raise ConfigError("seconds" if self.rank >= 0 and self.step >= 0 else "rank" if self.rank < 0 else "step",
                              (self.rank, self.step, self.seconds), "rank >= 0, step >= 0 and seconds > 0")


@dataclass
class DebugCfg:
    watchdog: WatchdogCfg = field(default_factory=WatchdogCfg)
    # Every N optimizer steps: TensorBoard histograms of the Gaussians and of the gradient norms per model part.
    health_every_n_steps: int | None = None
    # Replay a diverged step from a checkpoint: anomaly detection on at this global step, the run ends after it,
    # nothing is validated or saved (the divergence error prints the whole command).
    replay_step: int | None = None
    stall: StallCfg | None = None
    inspect_batches: int = 2  # mode=inspect: how many training batches it reads and reports

    def __post_init__(self) -> None:
        if self.health_every_n_steps is not None and self.health_every_n_steps < 1:
            raise ConfigError("health_every_n_steps", self.health_every_n_steps, "an integer >= 1, or null (off)")
        if self.replay_step is not None and self.replay_step < 0:
            raise ConfigError("replay_step", self.replay_step, "a global step >= 0, or null")
        if self.inspect_batches < 1:
            raise ConfigError("inspect_batches", self.inspect_batches, "an integer >= 1")


@dataclass
class RootCfg:
    dataset: DatasetCfg
    data_loader: DataLoaderCfg
    model: ModelCfg
    loss: LossCfg
    wandb: dict = field(default_factory=dict)  # free-form, kept for command-line compatibility
    mode: Literal["train", "test", "inspect"] = "train"
    optimizer: OptimizerCfg = field(default_factory=OptimizerCfg)
    checkpointing: CheckpointingCfg = field(default_factory=CheckpointingCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    test: TestCfg = field(default_factory=TestCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    debug: DebugCfg = field(default_factory=DebugCfg)
    seed: int = 111123
    output_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mode == "train" and self.trainer.max_steps == -1 and self.optimizer.cosine_lr:
            # The original builds OneCycleLR over max_steps + 10 = 9 steps here and trains on at lr ~0.
            raise ConfigError(
                "trainer.max_steps", -1,
                "an integer >= 1 while optimizer.cosine_lr=true (the one-cycle schedule spans trainer.max_steps "
                "+ 10 steps and cannot be built without an end), or optimizer.cosine_lr=false to train without "
                "a step limit",
            )
        if self.mode == "test" and self.checkpointing.load is None:
            raise ConfigError("checkpointing.load", None, "a checkpoint path when mode=test")


def scoring_lpips_weights(cfg: RootCfg) -> str | None:
    """The VGG weights folder for LPIPS scores (test mode, val/lpips): test.lpips_weights, else the training
    loss's loss.lpips.weights (the experiments' loss block is composed in test mode too), else None."""
    if cfg.test.lpips_weights is not None:
        return cfg.test.lpips_weights
    return cfg.loss.lpips.weights if cfg.loss.lpips is not None else None


# Why test scores have no LPIPS when no weights are configured (the console line and scores_all_avg.json).
LPIPS_NOT_COMPUTED = ("LPIPS not computed: neither test.lpips_weights nor loss.lpips.weights names a folder with "
                      "the VGG weights vgg16.pth and vgg.pth (docs/training.md, weights); set one of them to score "
                      "LPIPS as the paper does")


def load_config(dict_config: DictConfig | dict) -> RootCfg:
    """Hydra's composed config -> RootCfg, or ConfigError naming the full key path.

    `train.main` then calls `check_before_work`, which checks what would otherwise fail late: keys that
    depend on each other across groups and the files the config points at (kept apart so that a config
    can be composed and inspected on a machine without those files).
    """
    if isinstance(dict_config, DictConfig):
        dict_config = OmegaConf.to_container(dict_config, resolve=True)
    cfg = from_dict(RootCfg, dict_config)
    warn_about_keys_without_effect(cfg)
    return cfg


# The literal the loop accepts for `checkpointing.load`: the newest checkpoint in output_dir/checkpoints.
LATEST_CHECKPOINT = "latest"


def check_before_work(cfg: RootCfg) -> None:
    """What would otherwise fail after output is written: cross-group combinations and the files the config
    names (ConfigError, or MissingWeightsError for LPIPS files)."""
    training = cfg.mode in ("train", "inspect")
    if cfg.output_dir is None:
        raise ConfigError("output_dir", None, "a folder for the run's files (the default is outputs/<date>/<time>)")
    num_context_views = getattr(cfg.dataset.view_sampler, "num_context_views", None)
    if num_context_views is not None and num_context_views < 2:
        raise ConfigError("dataset.view_sampler.num_context_views", num_context_views,
                          "at least 2: the cost-volume encoder matches every context view against another")
    if cfg.model.decoder.backend == "gsplat" and (cfg.trainer.accelerator in ("cpu", "mps")
                                                  or not torch.cuda.is_available()):
        raise ConfigError("model.decoder.backend", "gsplat",
                          f"'auto' or 'torch' here: gsplat renders only on CUDA (trainer.accelerator="
                          f"{cfg.trainer.accelerator}, cuda available: {torch.cuda.is_available()}); "
                          "set model.decoder.backend=auto")
    view_sampler = cfg.dataset.view_sampler
    if view_sampler.name == "evaluation" and not Path(view_sampler.index_path).is_file():
        raise ConfigError("dataset.view_sampler.index_path", view_sampler.index_path,
                          "an existing evaluation index JSON (e.g. assets/evaluation_index_re10k.json, "
                          "relative to the directory you run from)")
    if training:
        check_losses(cfg.loss)
        if cfg.loss.depth is not None and cfg.train.depth_mode not in ("log", "log_clamped"):
            raise ConfigError("train.depth_mode", cfg.train.depth_mode,
                              "log (the original's) or log_clamped while the depth loss is enabled (it smooths the "
                              "rendered log depth), or no depth loss: add ~loss.depth")
        if cfg.loss.lpips is not None:
            find_weight_files(cfg.loss.lpips.weights)
        unimatch = cfg.model.encoder.unimatch_weights_path
        if cfg.checkpointing.load is None and unimatch is not None and not Path(unimatch).is_file():
            raise ConfigError("model.encoder.unimatch_weights_path", unimatch,
                              "an existing file (download gmdepth-scale1-resumeflowthings-scannet-5d9d7964.pth "
                              "from the UniMatch model zoo), or null to start the backbone from random init")
    if cfg.mode == "test" and scoring_lpips_weights(cfg) is not None:
        find_weight_files(scoring_lpips_weights(cfg))
    elif cfg.test.lpips_weights is not None:
        find_weight_files(cfg.test.lpips_weights)
    name = cfg.wandb.get("name") if isinstance(cfg.wandb, dict) else None
    if cfg.mode == "test" and name is not None and (Path(str(name)).is_absolute() or ".." in Path(str(name)).parts):
        raise ConfigError("wandb.name", name, "a name for the folder under test.output_path (no absolute path, "
                          "no '..'): test mode writes into test.output_path/<wandb.name>")
    load = cfg.checkpointing.load
    if load is not None and load != LATEST_CHECKPOINT and not Path(load).is_file():
        raise ConfigError("checkpointing.load", load,
                          f"an existing checkpoint file, '{LATEST_CHECKPOINT}' (the newest in output_dir) "
                          "or null (start from scratch)")


# Keys the original accepts that change nothing here: (the values main.yaml ships, why they have no effect).
KEYS_WITHOUT_EFFECT = {
    "data_loader.train.persistent_workers": ((True,), "the train stream keeps its workers for the whole run"),
    "data_loader.val.persistent_workers": ((True,), "validation reads its scenes in the training process"),
    "data_loader.val.num_workers": ((0, 1), "validation reads its scenes in the training process"),
    "data_loader.test.persistent_workers": ((False,), "the test loader makes one pass"),
    "train.extended_visualization": ((False,), "the original's extended visualisation is not implemented"),
    "checkpointing.pretrained_model": ((None,), "unused in the original too; fine-tune with "
                                                "checkpointing.load=PATH checkpointing.resume=false"),
    "model.encoder.visualizer": ((dataclasses.asdict(VisualizerCfg()),), "the original's encoder visualiser "
                                                                         "is disabled there too"),
}


def warn_about_keys_without_effect(cfg: RootCfg) -> None:
    """One warning per key that is set away from its default but does nothing."""
    for key, (defaults, reason) in KEYS_WITHOUT_EFFECT.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if value not in defaults:
            warnings.warn(f"config key '{key}' = {value!r} has no effect: {reason}", UserWarning, stacklevel=2)


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from plain `data`, checking every key and type on the way."""
    if not isinstance(data, dict):
        raise ConfigError(path or "<root>", data, f"a mapping of {cls.__name__} keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise ConfigError(_join(path, str(unknown[0])), data[unknown[0]], f"one of the keys {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(path, name), "<missing>", f"a value of type {_describe(hints[name])}")
    try:
        return cls(**kwargs)
    except ConfigError as error:  # raised by __post_init__ with a key relative to `cls`
        raise error.with_prefix(path) from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(path, value, "null")
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, path)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != isinstance(args[0], bool):
            raise ConfigError(path, value, "one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, _describe(tp))
        item = args[0] if args else Any
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "a string")
        return value
    raise TypeError(f"fabric_mvsplat.config cannot convert type {tp!r} (key '{path}')")


def _convert_union(members: tuple, value: Any, path: str) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise ConfigError(path, value, _describe(Union[members]))
    members = tuple(m for m in members if m is not type(None))
    if len(members) == 1:
        return _convert(members[0], value, path)
    if all(dataclasses.is_dataclass(m) for m in members):
        by_name = {typing.get_args(typing.get_type_hints(m)["name"])[0]: m for m in members}
        name = value.get("name") if isinstance(value, dict) else None
        if name not in by_name:
            raise ConfigError(_join(path, "name"), name, "one of " + ", ".join(repr(n) for n in by_name))
        return from_dict(by_name[name], value, path)
    for member in members:
        try:
            return _convert(member, value, path)
        except ConfigError:
            continue
    raise ConfigError(path, value, _describe(Union[members]))


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    return getattr(tp, "__name__", str(tp))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
