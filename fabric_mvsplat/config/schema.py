"""The typed root config: the dataclasses of the keys outside the dataset, data loader, model and loss groups
(those live beside their code: data/config.py, model/config.py, model/loss_config.py), and RootCfg.

Each dataclass holds its keys' defaults, and checks the range of its own values in `__post_init__`
(a `ConfigError` with the key relative to the dataclass; the converter in `loading` prefixes the path).
"""

from dataclasses import dataclass, field
from typing import Literal

from ..data.config import DataLoaderCfg, DatasetCfg
from ..errors import ConfigError
from ..model.config import ModelCfg
from ..model.loss_config import LossCfg


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
    # `loop.ValidationSchedule`). null: no validation.
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
        if self.rank < 0:
            raise ConfigError("rank", self.rank, "a rank >= 0")
        if self.step < 0:
            raise ConfigError("step", self.step, "a global step >= 0")
        if not self.seconds > 0:
            raise ConfigError("seconds", self.seconds, "a number of seconds > 0")


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


# The literal the loop accepts for `checkpointing.load`: the newest checkpoint in output_dir/checkpoints.
LATEST_CHECKPOINT = "latest"
