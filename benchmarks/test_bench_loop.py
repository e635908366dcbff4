"""Loop overhead: `loop.fit` vs a bare PyTorch loop vs the Lightning Trainer, same model/data/optimizer.

Each round trains `steps` optimizer steps from a fresh one-cycle schedule on the same in-memory
batches (so data loading is out of the picture), with gradient clipping at 0.5 as the original.
`bare` is the baseline: forward, backward, clip, Adam step, scheduler step, nothing else. `fabric`
is `fabric_mvsplat.loop.fit` as configured for training (scalars every step: one all_reduce, a
TensorBoard write and a console line); `fabric-log50` logs every 50th step, which separates the
logging cost from the loop itself. Two models: `tiny` (one conv, so the loop's own cost is visible;
run for 20 and 200 steps, the difference of the two overheads / 180 is the per-step overhead) and `mvsplat-small` (the real model, golden small encoder at 32x32, 2 context + 4 targets).

The Lightning Trainer case needs `pytorch_lightning`, which is not a project dependency: its wheel
ships a second copy of `lightning_fabric` that would overwrite the pinned one, so it is installed
beside the venv instead (see benchmarks/README.md) and the case skips without it.
"""

import itertools
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from benchmarks.conftest import make_batch
from fabric_mvsplat.types import StepOutput

LOOPS = ["bare", "fabric", "fabric-log50", "lightning"]
# Two tiny lengths separate fit's fixed cost (writer, progress bar, barrier) from its per-step cost.
STEPS = {"tiny-20": 20, "tiny-200": 200, "mvsplat-small": 3}
IMAGE = 32  # the real model's loop case must stay in seconds per step on 2 shared CPU cores
CLIP = 0.5


class TinyModel(nn.Module):
    """One conv from the two context images to the 4 target images; MVSplat's forward contract."""

    def __init__(self, target_views: int = 4) -> None:
        super().__init__()
        self.target_views = target_views
        self.conv = nn.Conv2d(6, 3 * target_views, 3, padding=1)

    def forward(self, batch: dict, global_step: int) -> StepOutput:
        context = batch["context"]["image"].flatten(1, 2)  # [B, 6, H, W]
        target = batch["target"]["image"]
        rendered = self.conv(context).unflatten(1, (self.target_views, 3)).sigmoid()
        mse = ((rendered - target) ** 2).mean()
        logs = {"loss/mse": mse.detach(), "loss/total": mse.detach(),
                "train/psnr": -10 * torch.log10(mse.detach()),
                "info/near": batch["target"]["near"].mean(), "info/far": batch["target"]["far"].mean()}
        return StepOutput(loss=mse, logs=logs)


class InMemoryStream:
    """The same few batches forever, with the train-stream interface that `fit` reads."""

    skipped_scenes = 0
    epoch = 0

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __iter__(self):
        return itertools.cycle(self.batches)

    def state_dict(self) -> dict:
        return {}


def one_cycle(optimizer: torch.optim.Optimizer, steps: int):
    from fabric_mvsplat.config import OptimizerCfg
    from fabric_mvsplat.build import make_scheduler

    return make_scheduler(OptimizerCfg(), steps, optimizer)


def bare_loop(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, stream, steps: int) -> Tensor:
    batches = iter(stream)
    model.train()
    for step in range(steps):
        output = model(next(batches), step)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return output.loss.detach()


def build(model_name: str, make_cfg, device: str, steps: int, log_every: int):
    cfg = make_cfg("small", image=IMAGE, extra=[
        f"trainer.max_steps={steps}", "trainer.val_check_interval=null", f"trainer.accelerator={device}",
        "trainer.devices=1", f"train.print_log_every_n_steps={log_every}",
    ])
    torch.manual_seed(0)
    if model_name.startswith("tiny"):
        model = TinyModel()
    else:
        from fabric_mvsplat.build import make_model

        model = make_model(cfg)
    model = model.to(device)
    stream = InMemoryStream([make_batch(1, 2, 4, IMAGE, device) for _ in range(2)])
    return cfg, model, stream


def lightning_trainer_fit(model: nn.Module, optimizer, stream, steps: int, device: str, log_dir: Path) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    class LitModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            output = self.model(batch, self.global_step)
            self.log_dict(output.logs, on_step=True, batch_size=len(batch["scene"]))
            return output.loss

        def configure_optimizers(self):
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": one_cycle(optimizer, steps), "interval": "step"}}

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(stream)

    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=steps, gradient_clip_val=CLIP,
        logger=TensorBoardLogger(str(log_dir)), log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers / iterable-length advice
        trainer.fit(LitModule(), torch.utils.data.DataLoader(Batches(), batch_size=None))


@pytest.mark.parametrize("model_name", list(STEPS))
@pytest.mark.parametrize("loop", LOOPS)
def test_loop_overhead(bench, benchmark, device, loop, model_name, make_cfg, tmp_path):
    if loop == "lightning":
        pytest.importorskip("pytorch_lightning", reason=(
            "pytorch_lightning is not installed: its wheel carries its own lightning_fabric and would overwrite "
            "the pinned one in the venv; see benchmarks/README.md for installing it beside the venv"))
    steps = 1 if benchmark.disabled else STEPS[model_name]
    cfg, model, stream = build(model_name, make_cfg, device, steps, log_every=50 if loop == "fabric-log50" else 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)

    if loop == "bare":
        schedule = {}

        def setup():
            schedule["now"] = one_cycle(optimizer, steps)

        run = lambda: bare_loop(model, optimizer, schedule["now"], stream, steps)  # noqa: E731
    elif loop.startswith("fabric"):
        from lightning_fabric import Fabric

        from fabric_mvsplat.data import StepTracker
        from fabric_mvsplat.loop import fit

        fabric = Fabric(accelerator=device, devices=1, precision="32-true")
        wrapped, wrapped_optimizer = fabric.setup(model, optimizer)
        schedule = {}

        def setup():
            schedule["now"] = one_cycle(optimizer, steps)

        def run():  # the training state as build.prepare_training builds it; fit ends with its final checkpoint
            state = {"model": wrapped, "optimizer": wrapped_optimizer, "scheduler": schedule["now"], "scaler": None,
                     "train_stream": stream, "val_source": None, "step_tracker": StepTracker(), "step": 0}
            return fit(fabric, cfg, state, tmp_path).end_step
    else:
        setup = None
        run = lambda: lightning_trainer_fit(model, optimizer, stream, steps, device, tmp_path)  # noqa: E731

    before = [p.detach().clone() for p in model.parameters()]
    result = bench(run, device=device, setup=setup, rounds=5 if model_name.startswith("tiny") else 3, items=steps, unit="steps",
                   compare=f"loop/{model_name}/{device}", variant=loop, baseline=loop == "bare",
                   steps_per_round=steps)
    if loop.startswith("fabric"):
        assert result == steps
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters())), "no training happened"
