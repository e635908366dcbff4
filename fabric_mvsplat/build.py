"""Builders for a run, from the root config: Fabric and its strategy, the data check, the model, the optimizer
and its schedule, and the training state (fine-tuning or an exact resume, with the schedule fitted to a new
`trainer.max_steps`)."""

import math
import os
import sys
from pathlib import Path

import torch
from lightning_fabric import Fabric
from lightning_fabric.strategies import DDPStrategy

from .checkpoint import load_file, load_weights, restore_checkpoint
from .config import OptimizerCfg, RootCfg, TrainerCfg, scoring_lpips_weights
from .data import StepTracker, check_dataset_roots
from .errors import ConfigError
from .model.mvsplat import MVSplat, build_model


def make_fabric(trainer: TrainerCfg) -> Fabric:
    devices = trainer.devices
    if devices == "auto" and "LOCAL_WORLD_SIZE" in os.environ:
        devices = int(os.environ["LOCAL_WORLD_SIZE"])  # under torchrun: one device per local process
    return Fabric(accelerator=trainer.accelerator, devices=devices, num_nodes=trainer.num_nodes,
                  strategy=make_strategy(trainer, devices), precision=trainer.precision)


def make_strategy(trainer: TrainerCfg, devices):
    """DDP without buffer broadcasts: the model's buffers are constants (SH mask, the frozen LPIPS
    net's ~59 MB of VGG weights), so broadcasting them every forward would only cost bandwidth."""
    if devices == "auto":
        uses_cuda = trainer.accelerator in ("auto", "cuda", "gpu")
        devices = torch.cuda.device_count() if uses_cuda and torch.cuda.is_available() else 1
    several_processes = (int(os.environ.get("WORLD_SIZE", "1")) > 1 or trainer.num_nodes > 1
                         or int(devices) != 1)
    if trainer.strategy == "auto" and not several_processes:
        return "auto"
    find_unused = trainer.strategy == "ddp_find_unused_parameters_true"
    return DDPStrategy(broadcast_buffers=False, find_unused_parameters=find_unused)


def prepare_data(fabric: Fabric, cfg: RootCfg) -> None:
    """Generate the demo's synthetic dataset if asked (rank 0 first, the others wait), then stop on missing or empty
    dataset roots."""
    demo_root = cfg.dataset.synthetic_if_missing
    # Only into the folder the config names as the demo's: a mistyped dataset.roots gets an error, not fake data.
    if demo_root is not None and Path(cfg.dataset.roots[0]).absolute() == Path(demo_root).absolute():
        from .data.synthetic import ensure_synthetic_dataset  # the generator's imports only when it runs

        with fabric.rank_zero_first():  # the other ranks then find the chunks in place and generate nothing
            ensure_synthetic_dataset(Path(demo_root), progress=sys.stderr.isatty())
    check_dataset(cfg)


def check_dataset(cfg: RootCfg) -> None:
    """DatasetError (naming dataset.roots and the folder) when a stage this run reads has no usable chunks."""
    stages = ["test"] if cfg.mode == "test" else ["train"] + (["val"] if cfg.trainer.val_check_interval else [])
    for stage in stages:
        check_dataset_roots(cfg.dataset, stage)


def make_model(cfg: RootCfg) -> MVSplat:
    """The model for `cfg.mode`, from its config slices: losses only when training, the UniMatch
    backbone only when training from scratch."""
    training = cfg.mode in ("train", "inspect")  # inspect runs one training forward and backward
    return build_model(
        cfg.model, cfg.loss if training else None, background_color=cfg.dataset.background_color, depth_mode=cfg.train.depth_mode,
        video_frames=cfg.train.video_frames, lpips_weights=scoring_lpips_weights(cfg),
        load_unimatch_backbone=training and cfg.checkpointing.load is None,
    )


def make_optimizer(cfg: OptimizerCfg, model: torch.nn.Module, fused: bool = False) -> torch.optim.Adam:
    """Adam over all parameters in one group, default betas/eps, no weight decay (the original).

    fused: torch's fused Adam kernel, used for CPU training: one vectorised pass over all parameters
    instead of a dozen tensor ops per parameter (4x faster on the demo model; same update up to rounding)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=fused or None)


def make_scheduler(cfg: OptimizerCfg, max_steps: int, optimizer: torch.optim.Optimizer, done: int = 0):
    """One-cycle cosine over max_steps + 10 (1% warm-up from lr/25, ends at lr/25e4), or linear warm-up.

    done > 0: the one-cycle schedule as if it had been built for `max_steps` from the start and stepped
    `done` times (the optimizer's groups already carry initial_lr/max_lr/min_lr from the first build).
    """
    if cfg.cosine_lr:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=max_steps + 10, pct_start=0.01,
            cycle_momentum=False, anneal_strategy="cos", last_epoch=done - 1,
        )
    warm_up = cfg.warm_up_steps
    return torch.optim.lr_scheduler.LinearLR(optimizer, 1 / warm_up, 1.0, total_iters=warm_up)


def prepare_training(fabric: Fabric, cfg: RootCfg, model: torch.nn.Module, train_stream, val_source,
                     step_tracker: StepTracker) -> dict:
    """Load (fine-tune or resume), build optimizer and schedule, wrap with Fabric -> the training state
    (see loop.fit): model, optimizer, scheduler, scaler, train_stream, val_source, step_tracker, step."""
    load, resume = cfg.checkpointing.load, cfg.checkpointing.resume
    if load is not None and not resume:  # fine-tuning: weights only, fresh optimizer/schedule/step
        load_weights(model, load, cfg.checkpointing.allow_unsafe_load)
        fabric.print(f"loaded weights from {load} (checkpointing.resume=false: optimizer and step start fresh)")
    if cfg.trainer.compile:
        model.encoder.compile()  # in place: state_dict keys stay `encoder.*`
    # Fused Adam on CPU, except under 16-mixed: a fused optimizer unscales by itself, and Fabric then cannot clip.
    scaler = getattr(fabric.strategy.precision, "scaler", None)
    optimizer = make_optimizer(cfg.optimizer, model, fused=fabric.device.type == "cpu" and scaler is None)
    scheduler = make_scheduler(cfg.optimizer, cfg.trainer.max_steps, optimizer)

    wrapped, optimizer = fabric.setup(model, optimizer)
    state = {"model": wrapped, "optimizer": optimizer, "scheduler": scheduler,
             "scaler": getattr(fabric.strategy.precision, "scaler", None),  # the 16-mixed GradScaler
             "train_stream": train_stream, "val_source": val_source, "step_tracker": step_tracker, "step": 0,
             "scenes_per_step": {"world_size": fabric.world_size, "batch_size": cfg.data_loader.train.batch_size,
                                 "accumulate_grad_batches": cfg.trainer.accumulate_grad_batches}}
    if load is not None and resume:  # full resume: weights, optimizer, schedule, scaler, step, data, RNG
        # After setup, so that the optimizer state lands on the parameters' device.
        restore_checkpoint(load_file(load, cfg.checkpointing.allow_unsafe_load), load, state,
                           fabric.global_rank, fabric.world_size)
        state["scheduler"] = fit_schedule_to_max_steps(fabric, cfg, state, load)
        fabric.print(f"resumed from {load} at global step {state['step']}")
        changed = step_meaning_change(state["resumed_from"]["scenes_per_step"], state["scenes_per_step"])
        if changed:
            fabric.print(changed)
    step_tracker.set_step(state["step"])
    return state


def step_meaning_change(before: dict | None, now: dict) -> str | None:
    """One line when a resume changes how many scenes one global step trains on (ranks x batch x accumulation):
    the step count, the schedule and the view-sampler curriculum go on counting steps, which now mean more or
    fewer scenes. None when nothing changed or the checkpoint did not record it."""
    if not before:
        return None
    names = ("world_size", "batch_size", "accumulate_grad_batches")
    keys = {"world_size": "ranks", "batch_size": "data_loader.train.batch_size",
            "accumulate_grad_batches": "trainer.accumulate_grad_batches"}
    changes = [f"{keys[name]} {before.get(name)} -> {now[name]}" for name in names if before.get(name) != now[name]]
    if not changes:
        return None
    scenes_before = math.prod(int(before.get(name, 1)) for name in names)
    scenes_now = math.prod(now[name] for name in names)
    return (f"resuming with {', '.join(changes)}: one step now trains on {scenes_now} scenes instead of "
            f"{scenes_before}; the step count, learning-rate schedule and view-sampler curriculum continue from the "
            "checkpoint's step")


def fit_schedule_to_max_steps(fabric: Fabric, cfg: RootCfg, state: dict,
                              load: str) -> torch.optim.lr_scheduler.LRScheduler:
    """A resumed run may set another trainer.max_steps: refuse one below the checkpoint's step before any
    work, and rebuild the one-cycle schedule for the new length from where the loaded one stood."""
    max_steps, step, scheduler = cfg.trainer.max_steps, state["step"], state["scheduler"]
    if max_steps != -1 and max_steps < step:
        raise ConfigError("trainer.max_steps", max_steps,
                          f"an integer >= {step}, the global step of {load} (or -1 with optimizer.cosine_lr=false)")
    if not isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) or scheduler.total_steps == max_steps + 10:
        return scheduler
    fabric.print(f"trainer.max_steps is {max_steps}, the checkpoint's schedule was built for "
                 f"{scheduler.total_steps - 10}: the one-cycle schedule is rebuilt for {max_steps} steps and "
                 f"continues from scheduler step {scheduler.last_epoch}")
    return make_scheduler(cfg.optimizer, max_steps, state["optimizer"], done=scheduler.last_epoch)
