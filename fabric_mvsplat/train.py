"""Entry point: `python -m fabric_mvsplat.train +experiment=re10k [key=value ...]`.

Hydra composes `fabric_mvsplat/configs/main.yaml`; `load_config` checks every key before any work; then Fabric, data,
model, optimizer and scheduler are built here and handed to `loop.fit` (mode=train) or to
`evaluation.test_mode.run_test` (mode=test). Under `torchrun`, Fabric reads the rank layout from torchrun's
environment and every rank runs this same file.
"""

import logging
import math
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from lightning_fabric import Fabric
from omegaconf import DictConfig, OmegaConf

from .config import OptimizerCfg, RootCfg, TrainerCfg, check_before_work, load_config, scoring_lpips_weights
from .errors import ConfigError, DiskFullError, EmptyEvaluationError, OutputFolderError, UserError, is_disk_full
from .evaluation.test_mode import test_results_dir
from .output_folder import FolderLock, RunLog, check_writable
from .shell_command import hydra_overrides, override_key, train_command

# The Hydra configs ship inside the package, so a plain `pip install .` finds them from any directory.
CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
log = logging.getLogger(__name__)


EXIT_USER_ERROR = 2  # a mistake found before any work: nothing was written
EXIT_EMPTY_EVALUATION = 3  # test mode rendered or scored no scene (its counts were written)
EXIT_DISK_FULL = 74  # sysexits' EX_IOERR: no space left while writing; what was written before is intact
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="main")
def main(dict_config: DictConfig) -> None:
    """The one place errors become exit codes (docs/errors.md): one line each, no traceback for what the user
    fixes; a bug keeps its traceback."""
    run_log = RunLog().install()  # log records wait in memory until the run has started
    try:
        cfg = load_config(dict_config)
        check_before_work(cfg)
        result = run(cfg, Path(cfg.output_dir), config_yaml=OmegaConf.to_yaml(dict_config, resolve=True),
                     run_log=run_log)
    except (Exception, KeyboardInterrupt) as error:
        ending = error_ending(error)
        if ending is None:
            raise
        code, message = ending
        print(f"fabric_mvsplat: {message}", file=sys.stderr)
        sys.exit(code)
    finally:
        run_log.close()
    code = result_exit_code(cfg, result)
    if code:
        sys.exit(code)


def error_ending(error: BaseException) -> tuple[int, str] | None:
    """(exit code, the line to print) for an error that ends a run the user can act on; None for a bug."""
    if isinstance(error, UserError):
        return EXIT_USER_ERROR, str(error)
    if isinstance(error, EmptyEvaluationError):  # every rank raises it together, after the results are written
        return EXIT_EMPTY_EVALUATION, str(error)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, ("interrupted by a second Ctrl-C; every checkpoint on disk is complete (a write "
                                  "in progress was finished first)")
    if isinstance(error, DiskFullError):
        return EXIT_DISK_FULL, str(error)
    if is_disk_full(error):
        return EXIT_DISK_FULL, (f"no space left on the device ({error}); the files written before are intact. "
                                "Free space, or set output_dir (test mode: test.output_path) on a larger disk")
    return None


def result_exit_code(cfg: RootCfg, result) -> int:
    """0, or 75 after a stop signal (the checkpoint is saved: run the same command to resume)."""
    from .loop import EXIT_STOPPED_BY_SIGNAL

    stopped = cfg.mode == "train" and result["summary"]["stopped_by"] is not None
    return EXIT_STOPPED_BY_SIGNAL if stopped else 0


def run(cfg: RootCfg, output_dir: Path, config_yaml: str | None = None, run_log: RunLog | None = None):
    """Everything after the config: the same code for one process and for every torchrun rank."""
    from .debug.determinism import make_deterministic

    make_deterministic(cfg.trainer.deterministic)  # before anything creates the CUDA context
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as the original
    fabric = make_fabric(cfg.trainer)
    fabric.launch()
    # Each rank may have composed its own time-stamped Hydra directory; rank 0's wins.
    output_dir = Path(fabric.broadcast(str(output_dir), src=0))
    with claim_output_folders(fabric, cfg, output_dir):
        resolve_latest(cfg, output_dir)
        refuse_to_mix_runs(cfg, output_dir)
        from .model.decoder.gsplat_build import prepare_gsplat

        prepare_gsplat(fabric, cfg.model.decoder.backend)  # local rank 0 builds gsplat's kernels first, if used
        prepare_data(fabric, cfg)
        fabric.seed_everything(cfg.seed + fabric.global_rank)  # per-rank seeds, as the original
        if fabric.global_rank == 0:
            log.info(f"output directory: {output_dir}")  # through logging: it lands in output_dir/train.log too
        started = RunStart(config_yaml, run_log)
        if cfg.mode == "test":
            result = run_test_mode(fabric, cfg, output_dir, started)
        elif cfg.mode == "inspect":
            from .debug.inspect import run_inspect

            record_start(fabric, cfg, output_dir, RunStart(None, run_log), 0)  # the log; inspect writes its own
            result = run_inspect(fabric, cfg, make_model(cfg), output_dir, config_yaml)
        else:
            result = run_training(fabric, cfg, output_dir, started)
            report_end(fabric, cfg, result, output_dir)
        stopped = cfg.mode == "train" and result["summary"]["stopped_by"] is not None
        shut_down(fabric, stopped_by_signal=stopped)
    return result


@contextmanager
def claim_output_folders(fabric: Fabric, cfg: RootCfg, output_dir: Path):
    """Before any work, on rank 0: hold the folder this run writes its results into (training and inspect:
    output_dir; test mode: test.output_path/<wandb.name>), so a second run on it stops with a line naming this one, and check that
    every folder it writes is writable. Every rank raises the same error when rank 0 could not. A training run
    then removes the temporary files an earlier, killed run left (only the folder's holder may)."""
    lock, problem = None, None
    if fabric.global_rank == 0:
        try:
            if cfg.mode != "test":
                lock = FolderLock(output_dir, "output_dir").acquire()
                check_writable(output_dir, "output_dir")
            else:
                lock = FolderLock(test_results_dir(cfg), "test.output_path").acquire()
                check_writable(test_results_dir(cfg), "test.output_path")
                check_writable(output_dir, "output_dir")  # config_test.yaml and the log
        except OutputFolderError as error:
            problem = str(error)
            if lock is not None:
                lock.release()
    problem = fabric.broadcast(problem, src=0)
    if problem is not None:
        raise UserError(problem)
    try:
        if lock is not None and cfg.mode == "train":
            from .checkpoint import remove_stray_temporaries

            for stray in remove_stray_temporaries(output_dir / "checkpoints"):
                fabric.print(f"removed {stray} (a checkpoint write interrupted by an earlier kill)")
        yield
    finally:
        if lock is not None:
            lock.release()


@dataclass
class RunStart:
    """What a run writes once it has started (its checkpoint loaded): the resolved config and the log file."""

    config_yaml: str | None
    run_log: RunLog | None


def record_start(fabric: Fabric, cfg: RootCfg, output_dir: Path, started: RunStart, step: int) -> None:
    """Once the checkpoint (if any) has loaded, so that a failed start changes nothing in output_dir: the resolved
    config and the log file. A resumed run keeps the earlier run's config.yaml and writes its own beside it; a
    test run into a training run's folder writes config_test.yaml."""
    if fabric.global_rank != 0:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    if started.run_log is not None:
        started.run_log.open(output_dir / "train.log")
    if started.config_yaml is None:
        return
    if cfg.mode == "test":
        name = "config_test.yaml"
    elif (output_dir / "config.yaml").exists() and step > 0:
        name = f"config_resumed_at_step_{step}.yaml"
    else:
        name = "config.yaml"
    (output_dir / name).write_text(started.config_yaml)


def resolve_latest(cfg: RootCfg, output_dir: Path) -> None:
    """checkpointing.load=latest: the newest checkpoint of the run history that last wrote to
    output_dir/checkpoints (checkpoint.latest_checkpoint), or a fresh start when there is none (training), so a
    requeued job runs the same command line."""
    from .checkpoint import latest_checkpoint

    if cfg.checkpointing.load != "latest":
        return
    folder = Path(output_dir) / "checkpoints"
    found = latest_checkpoint(folder)
    if found is not None:
        cfg.checkpointing.load = str(found)
        print(f"fabric_mvsplat: checkpointing.load=latest -> {found}", file=sys.stderr)
    elif cfg.mode == "test":
        raise ConfigError("checkpointing.load", "latest", f"a checkpoint file: there is no checkpoint in {folder}")
    else:
        cfg.checkpointing.load = None
        print(f"fabric_mvsplat: checkpointing.load=latest: no checkpoint in {folder}, starting fresh", file=sys.stderr)


def launch_command(settings: dict[str, str], world_size: int = 1, num_nodes: int = 1) -> str:
    """The command line of this run (Hydra's overrides) with `settings` replacing or adding keys, safe to paste
    (shell_command)."""
    kept = [o for o in hydra_overrides() if override_key(o) not in settings]
    return train_command(kept, settings, world_size, num_nodes)


def report_end(fabric: Fabric, cfg: RootCfg, state: dict, output_dir: Path) -> None:
    """The last lines of the console story: what ran, how fast, how good, where things are, what next."""
    from .loop import EXIT_STOPPED_BY_SIGNAL

    if fabric.global_rank != 0:
        return
    summary = state["summary"]
    steps = summary["end_step"] - summary["start_step"]
    seconds = summary["train_seconds"]
    rate = summary["scenes"] * fabric.world_size / seconds if seconds > 0 else 0.0  # ranks train alike
    last_val = summary["val"].get("val/psnr")
    best = summary["best_val_psnr"]
    lines = [f"steps {summary['start_step']} -> {summary['end_step']} ({steps} in {seconds / 60:.1f} min of "
             f"training, ~{rate:.2f} scenes/s over {fabric.world_size} rank(s))"]
    if summary["amp_skipped_steps"]:
        lines.append(f"16-mixed: the GradScaler skipped {summary['amp_skipped_steps']} update(s) (overflow)")
    if last_val is not None:
        lines.append(f"validation PSNR: last {last_val:.2f}, best {best:.2f}")
        abs_rel, delta = summary["val"].get("val/depth_abs_rel"), summary["val"].get("val/depth_delta_1_25")
        if abs_rel is not None:  # datasets with ground-truth depth (the synthetic demo's)
            lines.append(f"validation depth: AbsRel {abs_rel:.3f}, delta<1.25 {delta:.3f}" + (
                " (every Gaussian at the far plane? see docs/demo.md)" if abs_rel > 1 else ""))
    elif summary["val"]:
        lines.append("last validation: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(summary["val"].items())))
    lines.append(f"checkpoints: {output_dir / 'checkpoints'}" + (
        f" (last: {summary['last_checkpoint'].name})" if summary["last_checkpoint"] is not None else ""))
    lines.append(f"TensorBoard: {shlex.join(['tensorboard', '--logdir', str(summary['tensorboard'])])}")
    last = summary["last_checkpoint"]
    if summary["stopped_by"] is not None:
        lines.insert(0, f"stopped by {summary['stopped_by']} after step {summary['end_step']}: checkpoint {last}")
        lines.append("resume with: " + launch_command({"output_dir": str(output_dir), "checkpointing.load": "latest"},
                                                      fabric.world_size, cfg.trainer.num_nodes))
        lines.append(f"exit code {EXIT_STOPPED_BY_SIGNAL} (stopped by a signal after saving; run the same command to resume)")
    elif last is not None:
        lines.append("test it with: " + launch_command({"mode": "test", "checkpointing.load": str(last),
                                                        "dataset/view_sampler": "evaluation",
                                                        "test.compute_scores": "true"},
                                                       fabric.world_size, cfg.trainer.num_nodes))
        render = render_command(cfg, last, output_dir)
        if render is not None:
            lines.append("render it (Gaussians, video, depth; then the viewer): " + render)
    print("\n".join("fabric_mvsplat: " + line for line in lines), flush=True)


def render_command(cfg: RootCfg, checkpoint: Path, output_dir: Path) -> str | None:
    """`fabric_mvsplat.render` of `checkpoint` on the first test scene of dataset.roots[0] (shell-quoted), or None
    when that root has no test index."""
    import json

    from .data.scene_names import scene_file_name

    root = Path(cfg.dataset.roots[0])
    try:
        key = next(iter(json.loads((root / "test" / "index.json").read_text())), None)
    except (OSError, ValueError):
        return None
    if key is None:
        return None
    return shlex.join(["python", "-m", "fabric_mvsplat.render", str(checkpoint), "--chunks", str(root),
                       "--scene", str(key), "--output", str(Path(output_dir) / "render" / scene_file_name(str(key)))])


def refuse_to_mix_runs(cfg: RootCfg, output_dir: Path) -> None:
    """A run that starts at step 0 in a folder holding another run's checkpoints would mix its events with
    them, and the top-k rotation (newest steps win) would delete its own checkpoints: stop before any work."""
    starts_fresh = cfg.mode == "train" and not (cfg.checkpointing.load is not None and cfg.checkpointing.resume)
    existing = sorted(Path(output_dir, "checkpoints").glob("*.ckpt")) if starts_fresh else []
    if existing:
        raise ConfigError("output_dir", str(output_dir),
                          f"a folder without an earlier run's checkpoints; it already holds checkpoints "
                          f"({', '.join(p.name for p in existing[:3])}): resume it with checkpointing.load="
                          f"{existing[-1]}, or start a new run in another output_dir=..., or delete that folder")


def shut_down(fabric: Fabric, stopped_by_signal: bool = False) -> None:
    """Leave the process group together: exiting with it alive can abort a rank during teardown.

    After a stop signal every rank exits with the same code (75). torchrun stops the other ranks with SIGTERM as
    soon as one rank has exited non-zero; a rank still tearing down then would die of it with another code, so
    from here on further stop signals are ignored (the checkpoint is saved; the process is about to exit).
    """
    if stopped_by_signal:
        from .loop import STOP_SIGNALS, ignore_signals

        ignore_signals(STOP_SIGNALS)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        fabric.barrier()
        # gloo's worker thread drops the last collectives' tensors after they complete, and that needs the GIL.
        # If the process group's destructor runs first (when the DDP module is freed, in the main thread holding
        # the GIL), it joins that thread and both wait forever (seen under load in torch 2.13: a rank that never
        # exits). Sleeping releases the GIL so the worker finishes first.
        time.sleep(0.2)
        torch.distributed.destroy_process_group()


def run_training(fabric: Fabric, cfg: RootCfg, output_dir: Path, started: RunStart | None = None) -> dict:
    from .data import StepTracker, ValidationSource, make_train_stream
    from .loop import TrainingDiverged, fit
    model = make_model(cfg)
    step_tracker = StepTracker()
    train_stream = make_train_stream(cfg.dataset, cfg.data_loader.train, step_tracker, fabric.global_rank,
                                     fabric.world_size, cfg.seed, cfg.trainer.accumulate_grad_batches)
    validating = cfg.trainer.val_check_interval is not None and fabric.global_rank == 0
    val_source = ValidationSource(cfg.dataset, cfg.data_loader.val, step_tracker, cfg.seed) if validating else None
    state = prepare_training(fabric, cfg, model, train_stream, val_source, step_tracker)
    record_start(fabric, cfg, output_dir, started or RunStart(None, None), state["step"])
    try:
        return fit(fabric, cfg, state, output_dir)
    except TrainingDiverged as error:
        add_replay_note(fabric, cfg, error, output_dir)
        raise


def add_replay_note(fabric: Fabric, cfg: RootCfg, error: Exception, output_dir: Path) -> None:
    """The command that reruns the diverged step under anomaly detection (printed under the error's message)."""
    from .debug.replay import replay_command

    if cfg.debug.replay_step is not None:
        error.add_note(f"fabric_mvsplat: replay: step {error.step} diverged again: reproduced")
        return
    command = replay_command(output_dir, error.step, hydra_overrides(), fabric.world_size, cfg.trainer.num_nodes)
    error.add_note(f"replay step {error.step} under anomaly detection (from the newest checkpoint before it, "
                   f"into its own folder):\n    {command}")


def prepare_training(fabric: Fabric, cfg: RootCfg, model: torch.nn.Module, train_stream, val_source,
                     step_tracker) -> dict:
    """Load (fine-tune or resume), build optimizer and schedule, wrap with Fabric -> the training state
    (see loop.fit): model, optimizer, scheduler, scaler, train_stream, val_source, step_tracker, step."""
    from .checkpoint import load_file, load_weights, restore_checkpoint

    load, resume = cfg.checkpointing.load, cfg.checkpointing.resume
    if load is not None and not resume:  # fine-tuning: weights only, fresh optimizer/schedule/step
        load_weights(model, load, cfg.checkpointing.allow_unsafe_load)
        fabric.print(f"loaded weights from {load} (checkpointing.resume=false: optimizer and step start fresh)")
    if cfg.trainer.compile:
        model.encoder.compile()  # in place: state_dict keys stay `encoder.*`
    optimizer = make_optimizer(cfg.optimizer, model)
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


def fit_schedule_to_max_steps(fabric: Fabric, cfg: RootCfg, state: dict, load) -> torch.optim.lr_scheduler.LRScheduler:
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


def run_test_mode(fabric: Fabric, cfg: RootCfg, output_dir: Path, started: RunStart | None = None):
    from .checkpoint import load_weights
    from .data import make_test_loader
    from .evaluation.test_mode import run_test
    model = make_model(cfg)
    load_weights(model, cfg.checkpointing.load, cfg.checkpointing.allow_unsafe_load)
    record_start(fabric, cfg, output_dir, started or RunStart(None, None), 0)
    model = fabric.to_device(model).eval()
    test_loader = make_test_loader(cfg.dataset, cfg.data_loader.test, fabric.global_rank, fabric.world_size)
    return run_test(fabric, cfg, model, test_loader)


def make_model(cfg: RootCfg):
    """The model for `cfg.mode`, from its config slices: losses only when training, the UniMatch
    backbone only when training from scratch."""
    from .model.mvsplat import build_model

    training = cfg.mode in ("train", "inspect")  # inspect runs one training forward and backward
    return build_model(
        cfg.model, cfg.loss if training else None,
        num_context_views=getattr(cfg.dataset.view_sampler, "num_context_views", 2),
        background_color=cfg.dataset.background_color, depth_mode=cfg.train.depth_mode,
        video_frames=cfg.train.video_frames, lpips_weights=scoring_lpips_weights(cfg),
        load_unimatch_backbone=training and cfg.checkpointing.load is None,
    )


def prepare_data(fabric: Fabric, cfg: RootCfg) -> None:
    """Generate the demo's synthetic dataset if asked (rank 0 first, the others wait), then stop on missing or empty
    dataset roots."""
    demo_root = cfg.dataset.synthetic_if_missing
    # Only into the folder the config names as the demo's: a mistyped dataset.roots gets an error, not fake data.
    if demo_root is not None and Path(cfg.dataset.roots[0]).absolute() == Path(demo_root).absolute():
        from .data.synthetic import ensure_synthetic_dataset

        with fabric.rank_zero_first():  # the other ranks then find the chunks in place and generate nothing
            ensure_synthetic_dataset(Path(demo_root), progress=sys.stderr.isatty())
    check_dataset(cfg)


def check_dataset(cfg: RootCfg) -> None:
    """DatasetError (naming dataset.roots and the folder) when a stage this run reads has no usable chunks."""
    from .data import check_dataset_roots

    stages = ["test"] if cfg.mode == "test" else ["train"] + (["val"] if cfg.trainer.val_check_interval else [])
    for stage in stages:
        check_dataset_roots(cfg.dataset, stage)


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
    from lightning_fabric.strategies import DDPStrategy

    find_unused = trainer.strategy == "ddp_find_unused_parameters_true"
    return DDPStrategy(broadcast_buffers=False, find_unused_parameters=find_unused)


def make_optimizer(cfg: OptimizerCfg, model: torch.nn.Module) -> torch.optim.Adam:
    """Adam over all parameters in one group, default betas/eps, no weight decay (the original)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


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


if __name__ == "__main__":
    main()
