"""The training loop. Everything the Lightning Trainer did implicitly happens here, in order, in the open.

`global_step` counts finished optimizer steps, starting at 0, as Lightning's `self.global_step`: the
model's forward of the k-th step (0-based) sees k; checkpoints, validation and the stop condition look
at the count after the step (a checkpoint `step_20000` holds the weights after 20,000 steps).

Under DDP every rank runs the same loop on different scenes. Validation and file writing happen on
rank 0 only; the other ranks wait at a barrier, so a collective is never entered by one rank alone.
"""

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from lightning_fabric import Fabric
from lightning_fabric.wrappers import _FabricModule
from tqdm import tqdm

from .checkpoint import capture_rng, checkpoint_path, make_checkpoint, restore_rng, rotate, save_atomically
from .config import ProfileCfg, RootCfg
from .distributed import gather_objects, show_progress_bar
from .tb_logging import RankZeroWriter


def fit(fabric: Fabric, cfg: RootCfg, model, optimizer, scheduler, train_stream, val_source, step_tracker,
        output_dir: Path, state: dict) -> dict:
    """Train from `state["global_step"]` to `cfg.trainer.max_steps`; returns the final state.

    model:        fabric-wrapped; `model(batch, global_step) -> StepOutput(loss, logs)`, and
                  `validation_step(batch, global_step) -> ValidationOutput` on the unwrapped module
    train_stream: endless iterable of CPU batch dicts with `state_dict()` (data position)
    val_source:   endless iterator of validation batches on rank 0; None on other ranks or without validation
    """
    trainer, output_dir = cfg.trainer, Path(output_dir)
    is_rank_zero = fabric.global_rank == 0
    writer = RankZeroWriter(output_dir / "tensorboard", is_rank_zero, video_fps=30)
    step = state["global_step"]
    # Decided from the config alone: every rank must reach the same barriers (only rank 0 has a source).
    validating = trainer.val_check_interval is not None
    if validating and is_rank_zero and val_source is None:
        raise ValueError("trainer.val_check_interval is set but rank 0 got no validation source")

    # Sanity validation: find a broken validation path before hours of training, not after.
    if validating and trainer.num_sanity_val_steps > 0:
        validate(fabric, model, val_source, writer, step, trainer.num_sanity_val_steps)

    batches = iter(train_stream)
    progress = tqdm(initial=step, total=None if trainer.max_steps == -1 else trainer.max_steps,
                    disable=not (is_rank_zero and show_progress_bar()), dynamic_ncols=True, unit="step")
    profiler = StepProfiler(trainer.profile, output_dir / "profile", enabled=is_rank_zero)
    meter = Throughput()
    model.train()

    with torch.autograd.set_detect_anomaly(trainer.detect_anomaly):
        while trainer.max_steps == -1 or step < trainer.max_steps:
            profiler.before_step(step)
            # The view-sampler curriculum reads the step when it samples this batch.
            step_tracker.set_step(step)
            batch = fabric.to_device(next(batches))

            output = model(batch, step)
            stop_if_not_finite(fabric, output.loss, step, batch)
            fabric.backward(output.loss)
            if trainer.gradient_clip_val is not None:
                fabric.clip_gradients(model, optimizer, max_norm=trainer.gradient_clip_val)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()  # one scheduler step per optimizer step (Lightning's interval="step")

            profiler.after_step(step)
            meter.add(len(batch["scene"]))
            progress.update(1)
            logged_step, step = step, step + 1

            if step % cfg.train.print_log_every_n_steps == 0:
                log_training(fabric, writer, output, lr, logged_step, meter, train_stream, batch)
            with meter.paused():  # throughput counts training time only
                if validating and step % trainer.val_check_interval == 0:
                    validate(fabric, model, val_source, writer, step, num_batches=1)
                if step % cfg.checkpointing.every_n_train_steps == 0:
                    save_checkpoint(fabric, cfg, model, optimizer, scheduler, train_stream, val_source, step,
                                    output_dir / "checkpoints")

    profiler.close()
    progress.close()
    writer.close()
    fabric.barrier()
    return {**state, "global_step": step}


def log_training(fabric: Fabric, writer: RankZeroWriter, output, lr: float, step: int, meter: "Throughput",
                 train_stream, batch) -> None:
    """Average the step's scalars over ranks (one all_reduce) and write them on rank 0."""
    logs = {name: value.detach().float().reshape(()) for name, value in output.logs.items()}
    logs.setdefault("loss/total", output.loss.detach().float())
    names = sorted(logs)
    local_scenes, seconds = meter.take()
    skipped = float(getattr(train_stream, "skipped_scenes", 0))
    values = torch.stack([logs[n] for n in names] + [torch.tensor(v, device=fabric.device, dtype=torch.float32)
                                                      for v in (local_scenes, skipped)])
    values = fabric.all_reduce(values, reduce_op="sum").cpu()
    scalars = {name: values[i].item() / fabric.world_size for i, name in enumerate(names)}
    scalars["data/skipped_scenes"] = values[-1].item()
    scalars["train/scenes_per_second"] = values[-2].item() / max(seconds, 1e-9)
    scalars["train/lr"] = lr
    scalars["info/global_step"] = step
    writer.scalars(scalars, step)
    if fabric.global_rank == 0:
        near_far = "".join(f" | {k.split('/')[1]} {scalars[k]:.2f}" for k in ("info/near", "info/far") if k in scalars)
        tqdm.write(f"step {step}: loss {scalars['loss/total']:.6f} | lr {lr:.3e} | "
                   f"{scalars['train/scenes_per_second']:.2f} scenes/s{near_far} | scenes {list(batch['scene'])[:4]}")


def validate(fabric: Fabric, model, val_source, writer: RankZeroWriter, step: int, num_batches: int) -> None:
    """Render `num_batches` validation batches on rank 0 while the other ranks wait at the barrier.

    Validation is a visual check of one scene per interval (as in the original), so it is not sharded.
    It runs on the unwrapped module (no DDP collectives) with the training RNG states saved and
    restored, so validating never changes what training does next.
    """
    if fabric.global_rank == 0:
        module = model.module if isinstance(model, _FabricModule) else model
        module.eval()
        with torch.no_grad(), fabric.autocast(), preserved_rng():
            for _ in range(num_batches):
                batch = fabric.to_device(next(val_source))
                result = module.validation_step(batch, step)
                writer.scalars(result.scalars, step)
                for name, image in result.images.items():
                    writer.image(name, image, step)
                for name, video in result.videos.items():
                    writer.video(name, video, step)
        writer.flush()
        module.train()
    fabric.barrier()


def save_checkpoint(fabric: Fabric, cfg: RootCfg, model, optimizer, scheduler, train_stream, val_source,
                    step: int, directory: Path) -> None:
    """Every rank contributes its data position and RNG state; rank 0 writes the file atomically."""
    per_rank = gather_objects(fabric, {"train_stream": train_stream.state_dict(), "rng": capture_rng()})
    if fabric.global_rank == 0:
        module = model.module if isinstance(model, _FabricModule) else model
        epoch = int(getattr(train_stream, "epoch", 0))  # the pass over the training scenes
        checkpoint = make_checkpoint(
            module, optimizer, scheduler, step, epoch,
            train_stream_states=[entry["train_stream"] for entry in per_rank],
            val_source_state=val_source.state_dict() if val_source is not None else None,
            rng_states=[entry["rng"] for entry in per_rank],
        )
        save_atomically(checkpoint, checkpoint_path(directory, epoch, step))
        rotate(directory, cfg.checkpointing.save_top_k)
    fabric.barrier()


def stop_if_not_finite(fabric: Fabric, loss: torch.Tensor, step: int, batch: dict) -> None:
    """Stop every rank together (a lone raise would leave the others hanging in a collective)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(())
    if fabric.world_size > 1:
        bad = fabric.all_reduce(bad, reduce_op="sum")
    if bad.item() == 0:
        return
    where = (f"loss {loss.item()} on rank {fabric.global_rank} for scenes {list(batch['scene'])}"
             if not torch.isfinite(loss) else f"a non-finite loss on another rank (this rank: {loss.item():.6f})")
    raise RuntimeError(
        f"non-finite training loss at global step {step}: {where}. Things to try: a lower optimizer.lr, "
        "trainer.gradient_clip_val, trainer.precision=32-true, trainer.detect_anomaly=true to find the "
        "operation that produced it, and checking those scenes' cameras and near/far."
    )


@contextmanager
def preserved_rng():
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


class Throughput:
    """Scenes this rank trained on since the last `take()`, and the training seconds that took."""

    def __init__(self) -> None:
        self.scenes, self.start, self.excluded = 0, time.perf_counter(), 0.0

    def add(self, scenes: int) -> None:
        self.scenes += scenes

    @contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def take(self) -> tuple[int, float]:
        now = time.perf_counter()
        scenes, seconds = self.scenes, now - self.start - self.excluded
        self.scenes, self.start, self.excluded = 0, now, 0.0
        return scenes, seconds


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
