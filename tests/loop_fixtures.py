"""Test-only pieces for the loop: a tiny model with an `encoder`, synthetic stateful batch streams, configs.

The package ships no stand-in model; these exist so the loop, checkpoints and DDP can be tested in
seconds without the real encoder, decoder or data layer.
"""

from pathlib import Path

import torch
from torch import nn

from fabric_mvsplat.config import RootCfg, load_config
from fabric_mvsplat.types import StepOutput, ValidationOutput

CONFIG_DIR = Path(__file__).resolve().parents[1] / "fabric_mvsplat" / "configs"
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


class OverflowingBackward(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by inf (an overflow in a backward kernel)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class TinyModel(nn.Module):
    """forward(batch, step) -> StepOutput like the real wrapper; dropout makes resume depend on RNG state."""

    def __init__(self, nan_at_step: int | None = None, crash_at_step: int | None = None, dropout: float = 0.2,
                 step_seconds: float = 0.0, graphless_at_step: int | None = None,
                 inf_gradient_at_step: int | None = None) -> None:
        super().__init__()
        self.crash_at_step = crash_at_step
        self.encoder = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))
        self.nan_at_step = nan_at_step
        self.graphless_at_step = graphless_at_step
        self.inf_gradient_at_step = inf_gradient_at_step  # a finite loss whose backward overflows
        self.step_seconds = step_seconds  # a slow step, so that a test's signal lands mid-training
        self.validation_steps: list[int] = []
        self.seen_steps: list[int] = []
        self.anomaly_detection: list[bool] = []

    def forward(self, batch: dict, global_step: int) -> StepOutput:
        if global_step == self.crash_at_step:
            raise SimulatedCrash(f"killed at step {global_step}")
        self.seen_steps.append(global_step)
        self.anomaly_detection.append(torch.is_anomaly_enabled())
        if self.step_seconds:
            import time

            time.sleep(self.step_seconds)
        prediction = self.encoder(batch["x"])
        if global_step == self.inf_gradient_at_step:
            prediction = OverflowingBackward.apply(prediction)
        mse = ((prediction - batch["y"]) ** 2).mean()
        if global_step == self.nan_at_step:
            mse = mse * float("nan")
        if global_step == self.graphless_at_step:
            mse = mse.detach()  # as when every Gaussian is culled: nothing depends on the parameters
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
    """Batch `position` of a rank's stream; each sample depends on its index only, so batches of 4 and four
    batches of 1 hold the same samples."""
    indices = range(position * batch_size, (position + 1) * batch_size)
    x = torch.stack([torch.randn(FEATURES, generator=torch.Generator().manual_seed(
        seed * 1_000_003 + rank * 10_007 + index)) for index in indices])
    y = torch.stack([x[:, :3].sum(-1), x[:, 3:6].prod(-1), x[:, 6:].mean(-1)], dim=-1)
    return {"x": x, "y": y, "scene": [f"scene_r{rank}_{index}" for index in indices]}


class TinyTrainStream:
    """Endless, per-rank, resumable stream of synthetic batches (stands in for data.TrainStream)."""

    num_scenes = 20  # what a fractional trainer.val_check_interval counts a pass in

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


class ValidationStream:
    """An endless, resumable validation source (like data.ValidationSource). `one_scene`: every call yields the
    scene of a 1-scene split again; otherwise call k yields scene k, so a validation that renders another scene
    than an uninterrupted run shows in its scalars."""

    def __init__(self, one_scene: bool = False) -> None:
        self.one_scene, self.served = one_scene, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self.served += 1
        if self.one_scene:
            return make_batch(seed=99, rank=0, position=0, batch_size=1)
        return make_batch(seed=77, rank=0, position=self.served - 1, batch_size=1)

    def state_dict(self) -> dict:
        return {"served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self.served = state["served"]


class RecordingTracker:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def set_step(self, step: int) -> None:
        self.steps.append(step)


def tiny_state(fabric, cfg: RootCfg, model: TinyModel) -> dict:
    """build.prepare_training with the tiny stream and validation source -> the training state."""
    from fabric_mvsplat.build import prepare_training

    stream = TinyTrainStream(fabric.global_rank, cfg.data_loader.train.batch_size)
    val_source = ValidationStream(one_scene=True) if fabric.global_rank == 0 else None
    return prepare_training(fabric, cfg, model, stream, val_source, RecordingTracker())


def train_tiny(cfg: RootCfg, output_dir: Path, fabric=None, **model_kwargs):
    """train.run_training with the tiny pieces: -> (fabric, model, final state, stream, val source, summary).

    The model is built after seeding, as in train.py; model_kwargs go to TinyModel. checkpointing.load=latest
    is resolved as train.run does.
    """
    from fabric_mvsplat.build import make_fabric
    from fabric_mvsplat.loop import fit
    from fabric_mvsplat.output_folder import resolve_latest

    resolve_latest(cfg, output_dir)
    if fabric is None:
        fabric = make_fabric(cfg.trainer)
        fabric.launch()
    fabric.seed_everything(cfg.seed + fabric.global_rank)
    model = TinyModel(**model_kwargs)
    state = tiny_state(fabric, cfg, model)
    summary = fit(fabric, cfg, state, output_dir)
    return fabric, model, state, state["train_stream"], state["val_source"], summary


def tiny_worker(output_dir: Path, keys_json: str, step_seconds: float) -> None:
    """A whole training process as `python -m fabric_mvsplat.train` runs it (one process or one torchrun
    rank), with the tiny model: the output-folder lock, the console story, and main's exit codes (2 for a user
    error, 75 after a stop signal, ...). FABRIC_MVSPLAT_TEST_SLOW_SAVE=<seconds> makes every checkpoint write
    that long (a signal can then land inside one)."""
    import json
    import os
    import sys

    from fabric_mvsplat.build import make_fabric
    from fabric_mvsplat.output_folder import claim_output_folders
    from fabric_mvsplat.report import report_end
    from fabric_mvsplat.train import error_ending, result_exit_code, shut_down

    slow_save = float(os.environ.get("FABRIC_MVSPLAT_TEST_SLOW_SAVE", "0"))
    if slow_save:
        slow_down_checkpoint_writes(slow_save)
    cfg = tiny_cfg(**json.loads(keys_json))
    try:
        fabric = make_fabric(cfg.trainer)
        fabric.launch()
        with claim_output_folders(fabric, cfg, output_dir):
            fabric, *_, summary = train_tiny(cfg, output_dir, fabric=fabric, step_seconds=step_seconds)
            report_end(fabric, cfg, summary, output_dir)
            code = result_exit_code(summary)
            shut_down(fabric, stopped_by_signal=code != 0)
    except (Exception, KeyboardInterrupt) as error:
        ending = error_ending(error)
        if ending is None:
            raise
        print(f"fabric_mvsplat: {ending[1]}", file=sys.stderr, flush=True)
        code = ending[0]
    record = os.environ.get("FABRIC_MVSPLAT_TEST_EXIT_RECORD")
    if record:  # the code this rank exits with (a rank killed instead writes nothing)
        Path(record, f"rank{os.environ.get('RANK', '0')}.exit").write_text(str(code))
    sys.exit(code)


def slow_down_checkpoint_writes(seconds: float) -> None:
    """Every torch.save in this process (the training loop's are the checkpoint writes) prints `writing
    checkpoint`, then writes in two halves `seconds` apart."""
    import sys
    import time

    real_save = torch.save

    class SlowFile:
        def __init__(self, file) -> None:
            self.file, self.written = file, 0

        def write(self, data) -> int:
            if self.written == 0:
                self.written = 1
                half = len(data) // 2
                self.file.write(data[:half])
                self.file.flush()
                time.sleep(seconds)
                return half + self.file.write(data[half:])
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    def slow_save(payload, file, *args, **kwargs):
        print("writing checkpoint", file=sys.stderr, flush=True)
        real_save(payload, SlowFile(file), *args, **kwargs)

    torch.save = slow_save


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])




class RealSceneFeatures:
    """The real sharded TrainStream, each batch reduced to the tiny model's features.

    x: the context images' mean colours and near/far [B, 8]; y: the first target's mean colour [B, 3];
    scene: the real scene keys, so which rank saw which scene comes from the data layer's own sharding.
    """

    def __init__(self, stream) -> None:
        self.stream = stream

    def __iter__(self):
        for batch in self.stream:
            context, target = batch["context"], batch["target"]
            colours = context["image"].mean(dim=(-1, -2)).flatten(1)  # [B, V*3]
            x = torch.cat([colours, context["near"][:, :1], context["far"][:, :1] / 100], dim=1)[:, :FEATURES]
            yield {"x": x, "y": target["image"][:, 0].mean(dim=(-1, -2)), "scene": list(batch["scene"])}

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    @property
    def skipped_scenes(self) -> int:
        return self.stream.skipped_scenes

    @property
    def num_scenes(self) -> int:
        return self.stream.num_scenes

    @property
    def epoch(self) -> int:
        return self.stream.epoch


def ddp_worker(data_root: Path, output_dir: Path, results_dir: Path, val_check_interval: str = "2",
               max_steps: str = "6") -> None:
    """One torchrun rank of tests/test_ddp.py: train the tiny model on the real sharded train stream of
    `data_root`, and write what this rank did and wrote to `results_dir/rank<r>.json` (never stdout: the
    ranks' prints interleave). val_check_interval and max_steps: the config values, as on a command line."""
    import builtins
    import hashlib
    import io
    import json
    import os

    from fabric_mvsplat.data import StepTracker, TrainStream
    from fabric_mvsplat.data.config import DataLoaderStageCfg
    from fabric_mvsplat.build import make_fabric, prepare_training
    from fabric_mvsplat.loop import fit
    from fabric_mvsplat.train import shut_down
    from data_fixtures import dataset_cfg

    rank = int(os.environ["RANK"])
    writes: list[str] = []
    watched = str(Path(output_dir).resolve().parent)
    real_open, real_io_open, real_mkdir = builtins.open, io.open, os.mkdir
    if rank != 0:  # record every file this rank opens for writing, or directory it creates, near output_dir
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

    cfg = tiny_cfg(**{"trainer.devices": "auto", "trainer.max_steps": max_steps,
                      "trainer.val_check_interval": val_check_interval,
                      "checkpointing.every_n_train_steps": 3, "checkpointing.save_top_k": 1})
    fabric = make_fabric(cfg.trainer)
    fabric.launch()
    fabric.seed_everything(cfg.seed + fabric.global_rank)
    model = TinyModel()
    tracker = StepTracker()
    stream = RealSceneFeatures(TrainStream(
        dataset_cfg(data_root), DataLoaderStageCfg(batch_size=cfg.data_loader.train.batch_size), tracker,
        fabric.global_rank, fabric.world_size, cfg.seed))
    seen: list[str] = []
    recording_stream = RecordingStream(stream, seen)
    val_source = ValidationStream(one_scene=True) if fabric.global_rank == 0 else None
    state = prepare_training(fabric, cfg, model, recording_stream, val_source, tracker)
    fit(fabric, cfg, state, output_dir)
    params = flat_parameters(model)
    gathered = fabric.all_gather(params)
    builtins.open, io.open, os.mkdir = real_open, real_io_open, real_mkdir
    result = {"rank": rank, "world": fabric.world_size, "strategy": type(fabric.strategy).__name__,
              "step": state["step"], "equal": all(torch.equal(g, params) for g in gathered),
              "sha": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
              "validations": len(model.validation_steps), "validation_steps": model.validation_steps,
              "writes": writes, "scenes": seen}
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    (Path(results_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    shut_down(fabric)


def worker_stream_run(data_root: Path, output_dir: Path) -> None:
    """One training process on the real train stream with 2 DataLoader workers (tests/test_preemption.py sends
    SIGTERM to the whole process group, as SLURM does): the console story, exit 75 after a stop signal."""
    import sys

    from fabric_mvsplat.data import StepTracker, TrainStream
    from fabric_mvsplat.data.config import DataLoaderStageCfg
    from fabric_mvsplat.build import make_fabric, prepare_training
    from fabric_mvsplat.loop import EXIT_STOPPED_BY_SIGNAL, fit
    from fabric_mvsplat.report import report_end
    from data_fixtures import dataset_cfg

    cfg = tiny_cfg(**{"trainer.max_steps": 40, "trainer.val_check_interval": None})
    fabric = make_fabric(cfg.trainer)
    fabric.launch()
    fabric.seed_everything(cfg.seed)
    tracker = StepTracker()
    stream = RealSceneFeatures(TrainStream(dataset_cfg(data_root), DataLoaderStageCfg(batch_size=2, num_workers=2),
                                                 tracker, 0, 1, cfg.seed))
    model = TinyModel(step_seconds=0.3)
    summary = fit(fabric, cfg, prepare_training(fabric, cfg, model, stream, None, tracker), output_dir)
    report_end(fabric, cfg, summary, output_dir)
    if summary.stopped_by is not None:
        sys.exit(EXIT_STOPPED_BY_SIGNAL)


class RecordingStream:
    """Passes a stream through, appending each batch's scene keys to `seen`."""

    def __init__(self, stream, seen: list[str]) -> None:
        self.stream, self.seen = stream, seen

    def __iter__(self):
        for batch in self.stream:
            self.seen.extend(batch["scene"])
            yield batch

    def __getattr__(self, name):
        return getattr(self.stream, name)


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "tiny":  # loop_fixtures.py tiny OUTPUT_DIR '{"trainer.max_steps": 8}' STEP_SECONDS
        tiny_worker(Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "workers":  # loop_fixtures.py workers DATA_ROOT OUTPUT_DIR
        worker_stream_run(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        ddp_worker(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:])
