"""Checkpoints: atomic save, top-k rotation, and loading for resume, fine-tuning and test.

A checkpoint is a plain dict readable with `torch.load(weights_only=True)`, laid out as the original's
PyTorch Lightning checkpoints so that tools on either side can read the other's files:

    state_dict         model weights, keys `encoder.*`
    global_step        optimizer steps done (the `step_<s>` in the file name)
    epoch              training-stream pass (0 when the stream does not count passes)
    optimizer_states   [optimizer.state_dict()]
    lr_schedulers      [scheduler.state_dict()]
    train_stream       data position of the training stream on every rank (list, index = rank)
    val_source         position of the validation stream (validation runs on rank 0)
    rng_states         per-rank torch CPU/CUDA, python and numpy RNG states (list, index = rank)
"""

import os
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError  # noqa: F401 (raised here, imported from here by callers)

CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)-step_(\d+)\.ckpt$")
LIGHTNING_VERSION = "2.2.4"  # the original's pin; Lightning's loader reads this key



def checkpoint_path(directory: Path, epoch: int, step: int) -> Path:
    return Path(directory) / f"epoch_{epoch}-step_{step}.ckpt"


def save_atomically(obj: dict, path: Path) -> None:
    """Write to a hidden temporary file, fsync, then rename: a crash never leaves a truncated `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(directory)
    finally:
        os.close(directory)


def rotate(directory: Path, save_top_k: int) -> list[Path]:
    """Keep the `save_top_k` checkpoints with the highest global step (-1 keeps all); returns the kept files.

    The monitored value of the original is `info/global_step` in mode max, so "best" = newest.
    """
    found = []
    for path in Path(directory).glob("*.ckpt"):
        match = CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(2)), int(match.group(1)), path))
    found.sort(reverse=True)
    keep = found if save_top_k == -1 else found[:save_top_k]
    for _, _, path in found[len(keep):]:
        path.unlink(missing_ok=True)
    return [path for _, _, path in keep]


def load_file(path: str | Path, allow_unsafe_load: bool = False) -> dict:
    """torch.load on CPU with weights_only=True; every failure names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist (set by checkpointing.load)")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(
            f"checkpoint file {path} is corrupt or truncated (not a torch zip archive); "
            "use an earlier checkpoint from the same folder"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_unsafe_load:
            reason = next((line.strip() for line in str(error).splitlines() if "global" in line.lower()), "")
            raise CheckpointError(
                f"torch.load(weights_only=True) refused {path}: it contains pickled Python objects "
                f"({reason or 'see the chained error'}). If you trust the file, rerun with "
                "checkpointing.allow_unsafe_load=true"
            ) from error
        warnings.warn(f"loading {path} with weights_only=False (checkpointing.allow_unsafe_load=true)")
        # The explicit opt-in (checkpointing.allow_unsafe_load=true, off by default) for trusted files only.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint file {path} is corrupt or truncated: {error}; use an earlier checkpoint from the same folder"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint file {path} has no 'state_dict' entry (not a Lightning-layout checkpoint)")
    return checkpoint


def load_weights_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every weight or fail listing the missing, unexpected and wrong-shaped keys."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"the weights in {source} do not fit the model built from the config:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        lines.append("  check that model.encoder.* and the ablation flags match the checkpoint's training config")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def load_weights(model: nn.Module, path: str | Path, allow_unsafe_load: bool = False) -> dict:
    """Fine-tuning (`resume=false`) and test loading: weights only, strict. Returns the loaded file."""
    checkpoint = load_file(path, allow_unsafe_load)
    loader = getattr(model, "load_pretrained_weights", None)
    if callable(loader):  # the model may remap older layouts; it must stay strict
        loader(checkpoint["state_dict"], str(path))
    else:
        load_weights_strict(model, checkpoint["state_dict"], str(path))
    return checkpoint


def capture_rng() -> dict:
    """This process's RNG states in weights_only-loadable types."""
    python_version, python_state, python_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [python_version, list(python_state), python_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def make_checkpoint(
    model: nn.Module, optimizer, scheduler, global_step: int, epoch: int,
    train_stream_states: list, val_source_state: Any, rng_states: list[dict],
) -> dict:
    return {
        "state_dict": model.state_dict(),
        "global_step": global_step,
        "epoch": epoch,
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "train_stream": train_stream_states,
        "val_source": val_source_state,
        "rng_states": rng_states,
        "pytorch-lightning_version": LIGHTNING_VERSION,
    }


def restore_training_state(
    checkpoint: dict, path: str | Path, model: nn.Module, optimizer, scheduler,
    train_stream, val_source, rank: int, world_size: int,
) -> int:
    """Full resume (`resume=true`): weights, optimizer, scheduler, data positions, RNG. Returns global_step."""
    load_weights_strict(model, checkpoint["state_dict"], str(path))
    missing = [key for key in ("optimizer_states", "lr_schedulers", "global_step") if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} holds weights but no {', '.join(missing)}: it cannot be resumed; "
            "to fine-tune from it set checkpointing.resume=false"
        )
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    scheduler.load_state_dict(checkpoint["lr_schedulers"][0])
    streams = checkpoint.get("train_stream") or []
    if len(streams) == world_size:
        train_stream.load_state_dict(streams[rank])
    else:
        warnings.warn(
            f"{path} was written by {len(streams)} rank(s), this run has {world_size}: "
            "the training stream restarts from a fresh position (the run is not bit-identical)"
        )
    if val_source is not None and checkpoint.get("val_source") is not None:
        val_source.load_state_dict(checkpoint["val_source"])
    rng_states = checkpoint.get("rng_states") or []
    if len(rng_states) == world_size:
        restore_rng(rng_states[rank])
    return int(checkpoint["global_step"])
