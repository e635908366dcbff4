"""Test-only pieces for the loop: a tiny model with an `encoder`, synthetic stateful batch streams, configs.

The package ships no stand-in model; these exist so the loop, checkpoints and DDP can be tested in
seconds without the real encoder, decoder or data layer.
"""

from pathlib import Path

import torch
from torch import nn

from fabric_mvsplat.config import RootCfg, load_config
from fabric_mvsplat.model.types import StepOutput, ValidationOutput

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
FEATURES = 8


def compose_cfg(overrides: list[str]) -> RootCfg:
    """`config/main.yaml` + overrides -> RootCfg, as `python -m fabric_mvsplat.train` would build it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return load_config(compose("main", overrides=overrides))


def tiny_cfg(**keys) -> RootCfg:
    """A CPU config for the tiny model; keys are dotted config keys, e.g. tiny_cfg(**{"trainer.max_steps": 4})."""
    values = {
        "trainer.max_steps": 8, "trainer.accelerator": "cpu", "trainer.devices": 1,
        "trainer.val_check_interval": 2, "trainer.num_sanity_val_steps": 1,
        "checkpointing.every_n_train_steps": 4, "checkpointing.save_top_k": -1,
        "train.print_log_every_n_steps": 1, "data_loader.train.batch_size": 2,
        "model.encoder.unimatch_weights_path": None,
    }
    values.update(keys)
    return compose_cfg([f"{key}={'null' if value is None else value}" for key, value in values.items()])


class SimulatedCrash(Exception):
    """Stands in for a killed process."""


class TinyModel(nn.Module):
    """forward(batch, step) -> StepOutput like the real wrapper; dropout makes resume depend on RNG state."""

    def __init__(self, nan_at_step: int | None = None, crash_at_step: int | None = None) -> None:
        super().__init__()
        self.crash_at_step = crash_at_step
        self.encoder = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
        self.nan_at_step = nan_at_step
        self.validation_steps: list[int] = []
        self.seen_steps: list[int] = []
        self.anomaly_detection: list[bool] = []

    def forward(self, batch: dict, global_step: int) -> StepOutput:
        if global_step == self.crash_at_step:
            raise SimulatedCrash(f"killed at step {global_step}")
        self.seen_steps.append(global_step)
        self.anomaly_detection.append(torch.is_anomaly_enabled())
        prediction = self.encoder(batch["x"])
        mse = ((prediction - batch["y"]) ** 2).mean()
        if global_step == self.nan_at_step:
            mse = mse * float("nan")
        logs = {"loss/mse": mse.detach(), "loss/total": mse.detach(), "info/near": torch.tensor(1.0)}
        return StepOutput(loss=mse, logs=logs)

    @torch.no_grad()
    def validation_step(self, batch: dict, global_step: int) -> ValidationOutput:
        assert not self.training and not torch.is_grad_enabled()
        self.validation_steps.append(global_step)
        mse = ((self.encoder(batch["x"]) - batch["y"]) ** 2).mean()
        image = torch.rand(3, 8, 8)  # consumes RNG: the loop must shield training from it
        video = torch.linspace(0, 1, 4).view(4, 1, 1, 1).expand(4, 3, 8, 8)
        return ValidationOutput(scalars={"val/mse": float(mse)}, images={"comparison": image},
                                videos={"video/rgb": video})


def make_batch(seed: int, rank: int, position: int, batch_size: int) -> dict:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + position)
    x = torch.randn(batch_size, FEATURES, generator=generator)
    y = torch.stack([x[:, :3].sum(-1), x[:, 3:6].prod(-1), x[:, 6:].mean(-1)], dim=-1)
    scenes = [f"scene_r{rank}_{position * batch_size + i}" for i in range(batch_size)]
    return {"x": x, "y": y, "scene": scenes}


class TinyTrainStream:
    """Endless, per-rank, resumable stream of synthetic batches (stands in for data.TrainStream)."""

    def __init__(self, rank: int = 0, batch_size: int = 2, seed: int = 0) -> None:
        self.rank, self.batch_size, self.seed = rank, batch_size, seed
        self.position = 0
        self.skipped_scenes = 0
        self.scenes_seen: list[str] = []

    def __iter__(self):
        while True:
            batch = make_batch(self.seed, self.rank, self.position, self.batch_size)
            self.position += 1
            self.scenes_seen.extend(batch["scene"])
            yield batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


class OneSceneValidationSource:
    """An endless validation source over a 1-scene split: every call yields that scene again."""

    def __init__(self) -> None:
        self.served = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self.served += 1
        return make_batch(seed=99, rank=0, position=0, batch_size=1)

    def state_dict(self) -> dict:
        return {"served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self.served = state["served"]


class RecordingTracker:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def set_step(self, step: int) -> None:
        self.steps.append(step)


def train_tiny(cfg: RootCfg, output_dir: Path, fabric=None, **model_kwargs):
    """train.run_training with the tiny pieces: -> (fabric, model, final state, stream, val source).

    The model is built after seeding, as in train.py; model_kwargs go to TinyModel.
    """
    from fabric_mvsplat.loop import fit
    from fabric_mvsplat.train import make_fabric, prepare_training, seed_everything

    if fabric is None:
        fabric = make_fabric(cfg.trainer)
        fabric.launch()
    seed_everything(cfg.seed + fabric.global_rank)
    model = TinyModel(**model_kwargs)
    stream = TinyTrainStream(fabric.global_rank, cfg.data_loader.train.batch_size)
    val_source = OneSceneValidationSource() if fabric.global_rank == 0 else None
    tracker = RecordingTracker()
    wrapped, optimizer, scheduler, state = prepare_training(fabric, cfg, model, stream, val_source, tracker)
    state = fit(fabric, cfg, wrapped, optimizer, scheduler, stream, val_source, tracker, output_dir, state)
    return fabric, model, state, stream, val_source


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])




def ddp_worker(output_dir: Path) -> None:
    """One torchrun rank of tests/test_ddp.py: train the tiny model, report what this rank did and wrote."""
    import builtins
    import hashlib
    import io
    import os

    from fabric_mvsplat.train import shut_down

    rank = int(os.environ["RANK"])
    writes: list[str] = []
    watched = str(Path(output_dir).resolve().parent)
    if rank != 0:  # record every file this rank opens for writing, or directory it creates, near output_dir
        real_open, real_mkdir = builtins.open, os.mkdir

        def recording_open(file, mode="r", *args, **kwargs):
            if any(flag in mode for flag in "wax+") and str(Path(str(file)).resolve()).startswith(watched):
                writes.append(str(file))
            return real_open(file, mode, *args, **kwargs)

        def recording_mkdir(path, *args, **kwargs):
            if str(Path(str(path)).resolve()).startswith(watched):
                writes.append(str(path))
            return real_mkdir(path, *args, **kwargs)

        builtins.open = io.open = recording_open
        os.mkdir = recording_mkdir

    cfg = tiny_cfg(**{"trainer.devices": "auto", "trainer.max_steps": 6, "trainer.val_check_interval": 2,
                      "checkpointing.every_n_train_steps": 3, "checkpointing.save_top_k": 1})
    fabric, model, state, stream, _ = train_tiny(cfg, output_dir)
    params = flat_parameters(model)
    gathered = fabric.all_gather(params)
    digest = hashlib.sha256(params.numpy().tobytes()).hexdigest()
    print(f"RESULT rank={rank} world={fabric.world_size} strategy={type(fabric.strategy).__name__} "
          f"step={state['global_step']} equal={all(torch.equal(g, params) for g in gathered)} sha={digest} "
          f"validations={len(model.validation_steps)} writes={len(writes)} {writes[:3]} "
          f"scenes={','.join(stream.scenes_seen)}", flush=True)
    shut_down(fabric)


if __name__ == "__main__":
    import sys

    ddp_worker(Path(sys.argv[1]))
