"""The training loop. Everything the Lightning Trainer did implicitly happens here, in order, in the open.

`step` (state["step"]) counts finished optimizer steps, starting at 0, as Lightning's `self.global_step`:
the model's forward of the k-th step (0-based) sees k; checkpoints, validation, logging and the stop
condition look at the count after the step (a checkpoint `step_20000` holds the weights after 20,000 steps,
and every TensorBoard scalar is written at the number of optimizer steps done when it was measured).

Under DDP every rank runs the same loop on different scenes. Validation and file writing happen on
rank 0 only; the other ranks wait at a barrier, so a collective is never entered by one rank alone.
Every decision that ends the loop early (a stop signal, a diverged step) is agreed by all ranks through a
collective first, so no rank is ever left waiting in one.
"""

import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning_fabric import Fabric
from tqdm import tqdm

from .checkpoint import Lineage, capture_rng, restore_rng, save_checkpoint
from .config import ProfileCfg, RootCfg
from .debug.health import HealthHistograms
from .debug.replay import Replay
from .debug.watchdog import TRAINING_STEP, Watchdog, stall_if_asked
from .distributed import gather_objects, show_progress_bar
from .progress import StepClock
from .tb_logging import RankZeroWriter

# SIGUSR1 (SLURM's warning) is POSIX-only: where the platform lacks a signal (Windows), it is left out.
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
EXIT_STOPPED_BY_SIGNAL = 75  # sysexits' EX_TEMPFAIL: a checkpoint was saved, run the same command again


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient, or a loss without a graph: names the step, rank(s) and scenes.
    `step` is the global step that diverged (the entry point adds the command that replays it)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class TrainingSummary:
    """What `fit` reports for the end-of-run lines (see report.report_end)."""

    start_step: int
    tensorboard: Path
    end_step: int = 0
    scenes: int = 0  # trained on this rank
    train_seconds: float = 0.0  # training only: validation and checkpoints excluded
    val: dict[str, float] = field(default_factory=dict)  # the last validation's scalars
    best_val_psnr: float | None = None
    last_checkpoint: Path | None = None
    stopped_by: str | None = None  # the stop signal's name, e.g. "SIGTERM"
    amp_skipped_steps: int = 0  # 16-mixed: updates the GradScaler skipped


def fit(fabric: Fabric, cfg: RootCfg, state: dict, output_dir: Path) -> TrainingSummary:
    """Train from `state["step"]` to `cfg.trainer.max_steps`, or until a stop signal; `state` is updated in
    place and the summary of the run is returned.

    state, one plain dict (as litgpt keeps it):
        model         fabric-wrapped; `model(batch, step) -> StepOutput(loss, logs)`, and
                      `validation_step(batch, step) -> ValidationOutput` on the unwrapped `model.module`
        optimizer     fabric-wrapped
        scheduler     stepped once per optimizer step that was taken
        scaler        the 16-mixed GradScaler, or None
        train_stream  endless iterable of CPU batch dicts with `state_dict()` (data position)
        val_source    endless iterator of validation batches on rank 0; None elsewhere or without validation
        step_tracker  tells the view sampler the step the next batch trains at
        step          optimizer steps done
    """
    trainer, output_dir = cfg.trainer, Path(output_dir)
    model, optimizer, scheduler, scaler = state["model"], state["optimizer"], state["scheduler"], state.get("scaler")
    train_stream, val_source, step_tracker = state["train_stream"], state["val_source"], state["step_tracker"]
    module = model.module  # the unwrapped model, once: validation and checkpoints use it
    is_rank_zero = fabric.global_rank == 0
    start_step = state["step"]
    # On resume, drop the earlier run's events after the checkpoint's step: it wrote those steps already
    # and this run writes them again (train scalars at s are from the step that produced the checkpoint).
    writer = RankZeroWriter(output_dir / "tensorboard", is_rank_zero, video_fps=30,
                            purge_step=start_step + 1 if start_step > 0 else None)
    checkpoints = output_dir / "checkpoints"
    resumed = state.get("resumed_from") or {}
    state["lineage"] = Lineage.for_run(checkpoints, resumed.get("path"), resumed.get("lineage"))
    if is_rank_zero:
        warn_about_other_histories(state["lineage"])
    summary = TrainingSummary(start_step=start_step, tensorboard=writer.log_dir)
    # Decided from the config alone: every rank must reach the same barriers (only rank 0 has a source).
    validating = trainer.val_check_interval is not None
    if validating and is_rank_zero and val_source is None:
        raise ValueError("trainer.val_check_interval is set but rank 0 got no validation source")
    validation_due = ValidationSchedule.from_config(cfg, getattr(train_stream, "num_scenes", None), fabric.world_size)
    accumulate = trainer.accumulate_grad_batches
    max_norm = trainer.gradient_clip_val if trainer.gradient_clip_val is not None else math.inf

    step = start_step
    progress = tqdm(initial=step, total=None if trainer.max_steps == -1 else trainer.max_steps,
                    disable=not (is_rank_zero and show_progress_bar()), dynamic_ncols=True, unit="step")
    profiler = StepProfiler(trainer.profile, output_dir / "profile", enabled=is_rank_zero)
    meter = StepMeter(fabric.device, StepClock(start_step, None if trainer.max_steps == -1 else trainer.max_steps))
    health = DivergenceWatch(fabric, check_gradients=scaler is None)
    agreement = RankAgreement(fabric)
    stop = StopSignals()
    debug = cfg.debug
    watchdog = Watchdog(debug.watchdog, output_dir, fabric.global_rank, fabric.world_size)
    histograms = HealthHistograms(debug.health_every_n_steps if is_rank_zero else None, module, writer)  # rank 0 writes
    replay = Replay(debug.replay_step, module, is_rank_zero)  # replays no step unless debug.replay_step is set
    validating = validating and not replay.active  # a replay validates and saves nothing
    model.train()

    # Stop signals are handled from here to the end of training (DataLoader workers ignore them, see
    # data.stream); the writer and profiler are closed whatever happens.
    try:
        with stop.installed(), torch.autograd.set_detect_anomaly(trainer.detect_anomaly):
            # Sanity validation as the original: one batch (its validation loader holds one), nothing logged;
            # it finds a broken validation path before hours of training, not after. On resume the validation source
            # is put back where the checkpoint left it, so the validations that follow render what an uninterrupted
            # run renders.
            if validating and trainer.num_sanity_val_steps > 0:
                watchdog.beat("sanity validation")
                position = val_source.state_dict() if val_source is not None and start_step > 0 else None
                validate(fabric, module, val_source, None, start_step, summary)
                if position is not None:
                    val_source.load_state_dict(position)
            batches = iter(train_stream)
            while trainer.max_steps == -1 or step < trainer.max_steps:
                watchdog.beat(TRAINING_STEP, step)
                replay.before_step(step)
                profiler.before_step(step)
                step_tracker.set_step(step)  # the view-sampler curriculum reads the step when it samples
                logs, scenes = {}, []
                for micro_batch in range(accumulate):
                    with meter.waiting_for_data():
                        batch = fabric.to_device(next(batches))
                    scenes.extend(batch["scene"])
                    stall_if_asked(debug.stall, step, fabric.global_rank)
                    last = micro_batch == accumulate - 1
                    with fabric.no_backward_sync(model, enabled=not last):  # DDP syncs gradients once per step
                        output = model(batch, step)
                        replay.after_forward(step, output.loss, batch["scene"])
                        # One CPU collective per micro-batch: ranks agree on stopping and on a graph-less loss
                        # before anyone enters backward (a rank skipping backward alone would hang the others).
                        signalled, (graphless,) = agreement.signals_and(stop.number, not output.loss.requires_grad)
                        stop_requested = any(signalled)
                        if graphless:
                            health.raise_graphless(output.loss, step, list(batch["scene"]))
                        fabric.backward(output.loss / accumulate)  # the mean over micro-batches, as one big batch
                    health.record_loss(output.loss, step)
                    for name, value in output.logs.items():
                        logs[name] = logs.get(name, 0) + value.detach().float().reshape(()) / accumulate
                    logs.setdefault("loss/total", output.loss.detach().float() / accumulate)
                health.remember(step, scenes)
                histograms.write(step)  # every debug.health_every_n_steps steps: needs the gradients

                # The norm before clipping; inf = measure only. Never raises: a non-finite norm is ours to report
                # (32-true, bf16) or the GradScaler's to skip (16-mixed).
                grad_norm = fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                # The GradScaler skipped the update if the gradients overflowed (it synchronised to decide): then
                # the schedule must not move either, or it would run ahead of the updates actually made.
                skipped = scaler is not None and not torch.isfinite(grad_norm).item()
                if skipped:
                    summary.amp_skipped_steps += 1
                else:
                    scheduler.step()  # one scheduler step per optimizer update (Lightning's interval="step")
                health.record_gradients(grad_norm, step)

                profiler.after_step(step)
                meter.step_done(len(scenes), grad_norm, grad_norm_clipped(grad_norm, trainer.gradient_clip_val))
                progress.update(1)
                step += 1
                state["step"] = step
                finished = step == trainer.max_steps or replay.finished(step)

                if step % cfg.train.print_log_every_n_steps == 0:
                    log_training(fabric, writer, meter, health, StepRecord(step, lr, logs, scenes),
                                 skipped_scenes=getattr(train_stream, "skipped_scenes", 0),
                                 amp_skipped_steps=summary.amp_skipped_steps)
                with meter.paused():  # throughput and step time count training only
                    if validating and validation_due(step):
                        health.check(step)  # never render or save diverged weights
                        watchdog.beat("validation after step", step)
                        validate(fabric, module, val_source, writer, step, summary)
                    saving = step % cfg.checkpointing.every_n_train_steps == 0 or finished or stop_requested
                    if saving and not replay.active:
                        health.check(step)
                        watchdog.beat("checkpoint save after step", step)
                        with stop.deferring_exit():  # a second Ctrl-C never leaves a half-written file
                            summary.last_checkpoint = save(fabric, cfg, state, checkpoints)
                if stop_requested:  # the same on every rank, whichever rank(s) got the signal
                    summary.stopped_by = describe_stop(signalled, fabric.global_rank)
                    break
                if finished:  # max_steps, or the replayed step
                    break
    finally:  # also on an error: the events so far reach the disk, the profiler trace is written
        watchdog.close()
        histograms.close()
        profiler.close()
        progress.close()
        writer.close()
    health.check(step)
    meter.end_interval()  # the steps since the last log count in the totals too
    summary.scenes += meter.total_scenes
    summary.train_seconds += meter.total_seconds
    summary.end_step = step
    fabric.barrier()
    return summary


class ValidationSchedule:
    """Which optimizer steps end with a validation.

    An integer trainer.val_check_interval n: every step divisible by n. A float f in (0, 1], Lightning's
    meaning: a pass is the optimizer steps one rank takes to read its share of the training scenes once
    (ceil(scenes / (ranks x batch_size x accumulate_grad_batches)); on one rank len(train loader) as in the
    original), validation runs every max(1, int(f x pass)) steps counted from the start of each pass, as
    Lightning counts batches from the start of each epoch (a pass of 5 steps at f=0.5 validates at steps
    2, 4, 7, 9, ...).
    """

    def __init__(self, every: int, steps_per_pass: int | None = None) -> None:
        self.every, self.steps_per_pass = every, steps_per_pass

    @classmethod
    def from_config(cls, cfg: RootCfg, num_scenes: int | None, world_size: int) -> "ValidationSchedule | None":
        interval = cfg.trainer.val_check_interval
        if interval is None:
            return None
        if not isinstance(interval, float):
            return cls(interval)
        if num_scenes is None:
            raise ValueError("a fractional trainer.val_check_interval needs the train stream's num_scenes")
        scenes_per_step = world_size * cfg.data_loader.train.batch_size * cfg.trainer.accumulate_grad_batches
        steps_per_pass = max(1, math.ceil(num_scenes / scenes_per_step))
        return cls(max(1, int(interval * steps_per_pass)), steps_per_pass)

    def __call__(self, step: int) -> bool:
        """step: optimizer steps done (>= 1)."""
        if self.steps_per_pass is None:
            return step % self.every == 0
        return ((step - 1) % self.steps_per_pass + 1) % self.every == 0


def save(fabric: Fabric, cfg: RootCfg, state: dict, directory: Path) -> Path:
    path = save_checkpoint(fabric, state, directory, cfg.checkpointing.save_top_k)
    if fabric.global_rank == 0:
        tqdm.write(f"step {state['step']}: saved checkpoint {path}")
    return path


def warn_about_other_histories(lineage: Lineage) -> None:
    """A resume from an earlier checkpoint in a folder that holds later ones branches off: say what happens."""
    others = lineage.others_after_start()
    if others:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        tqdm.write(f"resuming from {lineage.start}, while {lineage.directory} also holds later checkpoints of another "
                   f"run history ({shown}): they are kept and never rotated, checkpointing.load=latest now means "
                   "this run's newest, and a checkpoint this run writes at the same step replaces that file")


def describe_stop(signalled: list[int], rank: int) -> str:
    """Per-rank signal numbers (0: none) -> e.g. `SIGTERM`, or `SIGTERM on rank 1` where this rank got none."""
    if signalled[rank]:
        return signal.Signals(signalled[rank]).name
    first = next(r for r, number in enumerate(signalled) if number)
    ranks = [r for r, number in enumerate(signalled) if number == signalled[first]]
    return f"{signal.Signals(signalled[first]).name} on rank{'s' if len(ranks) > 1 else ''} " +         ", ".join(map(str, ranks))


def grad_norm_clipped(grad_norm: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """Whether clip_gradients scaled the gradients down (a device tensor: no synchronisation)."""
    if max_norm is None:
        return torch.zeros((), device=grad_norm.device)
    return (grad_norm > max_norm).float()


@dataclass
class StepRecord:
    """What one optimizer step leaves for its log line."""

    step: int  # optimizer steps done
    lr: float  # the learning rate the step used
    logs: dict[str, torch.Tensor]  # the step's scalars, means over its micro-batches (device tensors)
    scenes: list[str]  # this rank's scenes of the step


def log_training(fabric: Fabric, writer: RankZeroWriter, meter: "StepMeter", health: "DivergenceWatch",
                 record: StepRecord, *, skipped_scenes: int, amp_skipped_steps: int) -> None:
    """Average the step's scalars over ranks and write them on rank 0: one all_reduce, which also carries
    the divergence flags (so checking them costs no synchronisation of its own).

    skipped_scenes: corrupt scenes this rank's stream skipped so far; amp_skipped_steps: updates the 16-mixed
    GradScaler skipped so far."""
    step, lr, logs, scenes = record.step, record.lr, record.logs, record.scenes
    names = sorted(logs)
    interval = meter.end_interval()  # per-rank sums over the steps since the last log
    extra = {"scenes": float(interval.scenes), "skipped": float(skipped_scenes),
             "data": interval.data_seconds, "compute": interval.compute_seconds, "steps": float(interval.steps),
             "memory_allocated": interval.memory_allocated_gib, "memory_reserved": interval.memory_reserved_gib}
    local = torch.stack([logs[n] for n in names]
                        + [torch.tensor(v, device=fabric.device, dtype=torch.float32) for v in extra.values()]
                        + [interval.grad_norm, interval.clipped])
    values, flags = health.reduce_with(local)
    values = values.tolist()
    world = fabric.world_size
    scalars = {name: values[i] / world for i, name in enumerate(names)}
    reduced = dict(zip(extra, values[len(names):len(names) + len(extra)]))
    grad_norm, clipped = values[-2] / world, values[-1] / world
    health.raise_if(flags, step)
    steps = max(reduced["steps"] / world, 1.0)
    seconds = (reduced["data"] + reduced["compute"]) / world
    scalars.update({
        "data/skipped_scenes": reduced["skipped"],
        "train/scenes_per_second": reduced["scenes"] / max(seconds, 1e-9),
        "train/lr": lr,
        "train/grad_norm": grad_norm,  # before clipping; identical on every rank after DDP's all-reduce
        "train/grad_clipped": clipped,
        "time/data_wait_seconds": reduced["data"] / world / steps,  # per step, mean over ranks
        "time/compute_seconds": reduced["compute"] / world / steps,
        "info/global_step": step,
    })
    if torch.cuda.is_available() and fabric.device.type == "cuda":
        scalars["memory/peak_allocated_gib"] = reduced["memory_allocated"] / world
        scalars["memory/peak_reserved_gib"] = reduced["memory_reserved"] / world
    else:
        scalars["memory/peak_rss_gib"] = reduced["memory_allocated"] / world
    if not health.check_gradients:  # 16-mixed: updates the GradScaler skipped so far
        scalars["train/amp_skipped_steps"] = amp_skipped_steps
    writer.scalars(scalars, step)
    if fabric.global_rank == 0:
        near_far = "".join(f" | {k.split('/')[1]} {scalars[k]:.2f}" for k in ("info/near", "info/far") if k in scalars)
        eta = meter.clock.eta(step)
        tqdm.write(f"{meter.clock.step_of_total(step)}: loss {scalars['loss/total']:.6f} | lr {lr:.3e} | grad norm "
                   f"{grad_norm:.3g} | {scalars['train/scenes_per_second']:.2f} scenes/s | data wait "
                   f"{scalars['time/data_wait_seconds'] * 1000:.0f} ms{near_far}{' | ' + eta if eta else ''} | "
                   f"scenes {scenes[:4]}")


def validate(fabric: Fabric, module, val_source, writer: RankZeroWriter | None, step: int,
             summary: TrainingSummary) -> None:
    """Render one validation batch on rank 0 while the other ranks wait at the barrier.

    Validation is a visual check of one scene per interval (as in the original), so it is not sharded.
    It runs on the unwrapped module (no DDP collectives) with the training RNG states saved and
    restored, so validating never changes what training does next. writer None: check only, log nothing.
    """
    if fabric.global_rank == 0:
        module.eval()
        with torch.no_grad(), fabric.autocast(), preserved_rng():
            batch = fabric.to_device(next(val_source))
            result = module.validation_step(batch, step)
        if writer is not None:
            writer.scalars(result.scalars, step)
            for name, image in result.images.items():
                writer.image(name, image, step)
            for name, video in result.videos.items():
                writer.video(name, video, step)
            writer.flush()
            summary.val = dict(result.scalars)
            if "val/psnr" in result.scalars:
                best = summary.best_val_psnr
                summary.best_val_psnr = max(result.scalars["val/psnr"], best if best is not None else -math.inf)
            shown = " | ".join(f"{name} {value:.4f}" for name, value in sorted(result.scalars.items()))
            tqdm.write(f"step {step}: validation ({batch['scene'][0]}): {shown}")
        module.train()
    fabric.barrier()


class DivergenceWatch:
    """Divergence checks that cost no synchronisation per step.

    Non-finite losses and gradient norms are recorded on the device as the first step they occurred; the
    flags travel in the logging all-reduce (or one small all-reduce before a checkpoint or at the end), and
    then every rank raises the same error. The scenes of the unchecked steps are remembered on the host so
    the error can name them. Under 16-mixed non-finite gradients are the GradScaler's to skip, not an error.
    """

    def __init__(self, fabric: Fabric, check_gradients: bool) -> None:
        self.fabric, self.check_gradients = fabric, check_gradients
        never = torch.tensor(-1.0, device=fabric.device)
        self.first_bad_loss, self.first_bad_gradient = never.clone(), never.clone()
        self.first_bad_loss_value = torch.zeros((), device=fabric.device)
        self.first_bad_gradient_value = torch.zeros((), device=fabric.device)
        self.unchecked: dict[int, list[str]] = {}

    def remember(self, step: int, scenes: list[str]) -> None:
        self.unchecked[step] = scenes

    def record_loss(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float().reshape(())
        newly_bad = (self.first_bad_loss < 0) & ~torch.isfinite(loss)
        self.first_bad_loss = torch.where(newly_bad, torch.full_like(self.first_bad_loss, step), self.first_bad_loss)
        self.first_bad_loss_value = torch.where(newly_bad, loss, self.first_bad_loss_value)

    def record_gradients(self, grad_norm: torch.Tensor, step: int) -> None:
        if self.check_gradients:
            newly_bad = (self.first_bad_gradient < 0) & ~torch.isfinite(grad_norm.float())
            self.first_bad_gradient = torch.where(newly_bad, torch.full_like(self.first_bad_gradient, step),
                                                  self.first_bad_gradient)
            self.first_bad_gradient_value = torch.where(newly_bad, grad_norm.float(), self.first_bad_gradient_value)

    def flags(self) -> torch.Tensor:
        """[world + 1]: this rank's first non-finite-loss step + 1 in its own slot, and the gradients'."""
        slots = torch.zeros(self.fabric.world_size + 1, device=self.fabric.device)
        slots[self.fabric.global_rank] = self.first_bad_loss + 1
        slots[-1] = (self.first_bad_gradient + 1) / self.fabric.world_size  # the same on every rank: sums to it
        return slots

    def reduce_with(self, values: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """All-reduce (sum) `values` together with the flags; -> (summed values on the CPU, flags)."""
        joined = torch.cat([values.float(), self.flags()])
        if self.fabric.world_size > 1:
            joined = self.fabric.all_reduce(joined, reduce_op="sum")
        joined = joined.cpu()
        count = values.numel()
        return joined[:count], joined[count:].tolist()

    def check(self, step: int) -> None:
        """Before validation, a checkpoint and the end: never show or save diverged weights."""
        _, flags = self.reduce_with(torch.zeros(0, device=self.fabric.device))
        self.raise_if(flags, step)

    def raise_if(self, flags: list[float], step: int) -> None:
        bad_ranks = {rank: round(value) - 1 for rank, value in enumerate(flags[:-1]) if value > 0.5}
        bad_gradient_step = round(flags[-1]) - 1
        if not bad_ranks and bad_gradient_step < 0:
            self.unchecked = {steps: scenes for steps, scenes in self.unchecked.items() if steps >= step}
            return
        first = min(list(bad_ranks.values()) + ([bad_gradient_step] if bad_gradient_step >= 0 else []))
        # Rare path: every rank is here (the flags were all-reduced), so gathering the scenes is safe.
        scenes = gather_objects(self.fabric, self.unchecked.get(first, []))
        per_rank = "; ".join(f"rank {rank}: {names}" for rank, names in enumerate(scenes))
        if bad_ranks and first in bad_ranks.values():
            ranks = sorted(rank for rank, bad in bad_ranks.items() if bad == first)
            mine = f" (this rank's loss: {self.first_bad_loss_value.item()})" if self.fabric.global_rank in ranks else ""
            what = f"non-finite training loss at global step {first} on rank(s) {ranks}{mine}"
        else:
            what = (f"non-finite gradients (norm before clipping: {self.first_bad_gradient_value.item()}) at global "
                    f"step {first}")
        raise TrainingDiverged(
            f"{what}; the step's scenes: {per_rank}. Noticed at step {step}: no checkpoint holds these weights. "
            "Things to try: a lower optimizer.lr, trainer.gradient_clip_val, trainer.precision=32-true, "
            "the replay command below to find the operation that produced it, and checking those scenes' "
            "cameras and near/far.", step=first,
        )

    def raise_graphless(self, loss: torch.Tensor, step: int, scenes: list[str]) -> None:
        """Every rank is here (agreed through RankAgreement.signals_and): name the ranks whose loss has no graph."""
        reports = gather_objects(self.fabric, (not loss.requires_grad, scenes))
        ranks = [rank for rank, (graphless, _) in enumerate(reports) if graphless]
        named = "; ".join(f"rank {rank}: {names}" for rank, (graphless, names) in enumerate(reports) if graphless)
        raise TrainingDiverged(
            f"the training loss at global step {step} does not require grad on rank(s) {ranks} (scenes: {named}): "
            "nothing in it depends on the parameters, e.g. every Gaussian was culled or every loss is disabled. "
            "Things to try: check those scenes' cameras and near/far, the loss config (loss=[mse,lpips]), "
            "and a lower optimizer.lr if earlier steps moved the Gaussians out of view.", step=step,
        )


class RankAgreement:
    """Ranks agree on host-side flags with one tiny all-reduce of CPU values (gloo: no device synchronisation);
    one process needs none."""

    def __init__(self, fabric: Fabric) -> None:
        self.group = None
        self.world_size, self.rank = fabric.world_size, fabric.global_rank
        self.distributed = fabric.world_size > 1
        if self.distributed and torch.distributed.get_backend() != "gloo":
            self.group = torch.distributed.new_group(backend="gloo")  # every rank calls fit: all create it

    def signals_and(self, signal_number: int, *flags: bool) -> tuple[list[int], list[bool]]:
        """(every rank's stop-signal number, 0 for none; each flag set on any rank), in the same one all-reduce:
        a signal sent to one rank only stops every rank, and every rank knows which."""
        world, rank = self.world_size, self.rank
        values = torch.zeros(world + len(flags))
        values[rank] = float(signal_number)
        values[world:] = torch.tensor([float(flag) for flag in flags])
        if self.distributed:
            torch.distributed.all_reduce(values, group=self.group)
        numbers = [round(value) for value in values[:world].tolist()]
        return numbers, [value > 0 for value in values[world:].tolist()]


class StopSignals:
    """SIGTERM, SIGUSR1 (SLURM's warning before the time limit) and SIGINT ask the loop to stop after the
    current optimizer step; a second SIGINT exits at once (KeyboardInterrupt), except during a checkpoint write,
    which it lets finish first (an interrupted write is a half-written temporary file and a torch error)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.pid = os.getpid()
        self.writing = False
        self.exit_after_write = False

    @property
    def requested(self) -> bool:
        return self.name is not None

    @property
    def number(self) -> int:
        """The signal received (0: none), as ranks exchange it."""
        return int(getattr(signal, self.name)) if self.name is not None else 0

    def handle(self, number: int, frame) -> None:
        if os.getpid() != self.pid:
            return  # a forked DataLoader worker: the main process decides, the worker keeps serving
        name = signal.Signals(number).name
        if name == "SIGINT" and self.name is not None:
            if self.writing:
                self.exit_after_write = True
                print("fabric_mvsplat: second Ctrl-C: exiting as soon as the checkpoint being written is complete",
                      file=sys.stderr, flush=True)
                return
            raise KeyboardInterrupt
        if self.name is None:
            self.name = name
            print(f"fabric_mvsplat: {name} received: finishing the current step, then saving a checkpoint "
                  "(Ctrl-C again to exit at once without saving)", file=sys.stderr, flush=True)

    @contextmanager
    def deferring_exit(self):
        """A second Ctrl-C inside waits for the block to end, then exits (KeyboardInterrupt)."""
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.exit_after_write:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        """Handlers are set in the main thread only (Python's rule); elsewhere the loop runs without them."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {name: signal.signal(getattr(signal, name), self.handle)
                    for name in STOP_SIGNALS if hasattr(signal, name)}
        try:
            yield
        finally:
            for name, handler in previous.items():
                signal.signal(getattr(signal, name), handler)


def ignore_signals(names: tuple[str, ...]) -> None:
    """From here on the process ignores these signals (main thread only; elsewhere a no-op)."""
    import threading

    if threading.current_thread() is threading.main_thread():
        for name in names:
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def peak_resident_gib() -> float:
    """Peak resident set size of this process; NaN where the POSIX `resource` module is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return math.nan
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


@contextmanager
def preserved_rng():
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


@dataclass
class MeterInterval:
    """One rank's sums over the steps since the previous `StepMeter.end_interval()`."""

    scenes: int
    steps: int
    data_seconds: float
    compute_seconds: float
    grad_norm: torch.Tensor  # the last step's norm before clipping (device tensor)
    clipped: torch.Tensor  # 1.0 if the last step's gradients were clipped (device tensor)
    memory_allocated_gib: float  # peak; on CPU the peak resident set size
    memory_reserved_gib: float


class StepMeter:
    """Per-rank sums since the last `end_interval()`: scenes, steps, seconds waiting for data vs computing (host
    clock; on CUDA the logging synchronisation settles queued work into the interval), the last step's
    gradient norm and clip flag (device tensors, read with the logging all-reduce), and peak memory."""

    def __init__(self, device: torch.device, clock: StepClock | None = None) -> None:
        self.device = device
        self.clock = clock or StepClock(0, None)  # `step N/total` and the ETA of the log lines
        self.total_scenes, self.total_seconds = 0, 0.0
        self.grad_norm = self.clipped = torch.zeros((), device=device)
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.scenes, self.steps, self.data_seconds, self.excluded, self.start = 0, 0, 0.0, 0.0, now

    @contextmanager
    def waiting_for_data(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.data_seconds += time.perf_counter() - start

    @contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def step_done(self, scenes: int, grad_norm: torch.Tensor, clipped: torch.Tensor) -> None:
        self.scenes += scenes
        self.steps += 1
        self.grad_norm, self.clipped = grad_norm.detach().float().reshape(()), clipped

    def end_interval(self) -> MeterInterval:
        now = time.perf_counter()
        seconds = now - self.start - self.excluded
        if self.device.type == "cuda":
            allocated = torch.cuda.max_memory_allocated(self.device) / 2**30
            reserved = torch.cuda.max_memory_reserved(self.device) / 2**30
        else:
            allocated = reserved = peak_resident_gib()
        result = MeterInterval(scenes=self.scenes, steps=self.steps, data_seconds=self.data_seconds,
                               compute_seconds=max(seconds - self.data_seconds, 0.0), grad_norm=self.grad_norm,
                               clipped=self.clipped, memory_allocated_gib=allocated, memory_reserved_gib=reserved)
        self.total_scenes += self.scenes
        self.total_seconds += seconds
        self._reset(now)
        return result


class StepProfiler:
    """torch.profiler over steps [start, start + steps) on rank 0, written as a TensorBoard trace."""

    def __init__(self, cfg: ProfileCfg | None, directory: Path, enabled: bool) -> None:
        self.cfg = cfg if enabled else None
        self.directory = directory
        self.profiler = None
        self.context = nullcontext()

    def before_step(self, step: int) -> None:
        if self.cfg is not None and step == self.cfg.start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(
                activities=activities, record_shapes=True, profile_memory=True,
                on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.directory)),
            )
            self.profiler.start()
        if self.profiler is not None:
            self.context = torch.profiler.record_function(f"train_step_{step}")
            self.context.__enter__()

    def after_step(self, step: int) -> None:
        if self.profiler is None:
            return
        self.context.__exit__(None, None, None)
        if step == self.cfg.start + self.cfg.steps - 1:
            self.close()

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()  # calls on_trace_ready: writes the trace
            self.profiler = None
