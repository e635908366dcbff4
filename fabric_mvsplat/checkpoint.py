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
    MixedPrecision     the GradScaler state under trainer.precision=16-mixed (Lightning's key)

The training objects travel in one plain `state` dict (see loop.fit); `save_checkpoint` / `restore_checkpoint`
below turn it into this layout and back, side by side.
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

from .distributed import gather_objects
from .weights import CheckpointError, load_weights_strict

__all__ = ["CheckpointError", "load_weights_strict"]  # re-exported: one error type, one loader

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
    found = list_checkpoints(directory)[::-1]  # newest first
    keep = found if save_top_k == -1 else found[:save_top_k]
    for _, path in found[len(keep):]:
        path.unlink(missing_ok=True)
    return [path for _, path in keep]


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


def load_weights(model: nn.Module, path: str | Path, allow_unsafe_load: bool = False) -> dict:
    """Fine-tuning (`resume=false`) and test loading: weights only, strict. Returns the loaded file."""
    checkpoint = load_file(path, allow_unsafe_load)
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


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """This run's checkpoints in `directory` as (global step, path), oldest step first."""
    found = []
    for path in Path(directory).glob("*.ckpt"):
        match = CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(2)), int(match.group(1)), path))
    return [(step, path) for step, _, path in sorted(found)]


def save_checkpoint(fabric, state: dict, directory: Path, save_top_k: int) -> Path:
    """Every rank contributes its data position and RNG state; rank 0 writes the file atomically and keeps
    the top k. All ranks return the path."""
    per_rank = gather_objects(fabric, {"train_stream": state["train_stream"].state_dict(), "rng": capture_rng()})
    epoch = int(getattr(state["train_stream"], "epoch", 0))  # the pass over the training scenes
    path = checkpoint_path(directory, epoch, state["step"])
    if fabric.global_rank == 0:
        save_atomically(make_checkpoint(state, per_rank, epoch), path)
        rotate(directory, save_top_k)
    fabric.barrier()
    return path


def make_checkpoint(state: dict, per_rank: list[dict], epoch: int) -> dict:
    """state (see loop.fit) + every rank's {"train_stream", "rng"} -> the checkpoint dict."""
    checkpoint = {
        "state_dict": state["model"].module.state_dict(),
        "global_step": state["step"],
        "epoch": epoch,
        "optimizer_states": [state["optimizer"].state_dict()],
        "lr_schedulers": [state["scheduler"].state_dict()],
        "train_stream": [entry["train_stream"] for entry in per_rank],
        "val_source": state["val_source"].state_dict() if state["val_source"] is not None else None,
        "rng_states": [entry["rng"] for entry in per_rank],
        "pytorch-lightning_version": LIGHTNING_VERSION,
    }
    if state.get("scaler") is not None:
        checkpoint["MixedPrecision"] = state["scaler"].state_dict()
    return checkpoint


def restore_checkpoint(checkpoint: dict, path: str | Path, state: dict, rank: int, world_size: int) -> None:
    """Full resume (`resume=true`): weights, optimizer, scheduler, AMP scaler, data positions, RNG, step."""
    load_weights_strict(state["model"].module, checkpoint["state_dict"], str(path))
    missing = [key for key in ("optimizer_states", "lr_schedulers", "global_step") if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} holds weights but no {', '.join(missing)}: it cannot be resumed; "
            "to fine-tune from it set checkpointing.resume=false"
        )
    state["optimizer"].load_state_dict(checkpoint["optimizer_states"][0])
    state["scheduler"].load_state_dict(checkpoint["lr_schedulers"][0])
    if state.get("scaler") is not None:
        if "MixedPrecision" in checkpoint:
            state["scaler"].load_state_dict(checkpoint["MixedPrecision"])
        else:
            warnings.warn(f"{path} holds no GradScaler state (it was not trained with 16-mixed): the loss scale "
                          "starts from its default")
    streams = checkpoint.get("train_stream") or []
    if len(streams) == world_size:
        state["train_stream"].load_state_dict(streams[rank])
    else:
        warnings.warn(
            f"{path} was written by {len(streams)} rank(s), this run has {world_size}: "
            "the training stream restarts from a fresh position (the run is not bit-identical)"
        )
    if state["val_source"] is not None and checkpoint.get("val_source") is not None:
        state["val_source"].load_state_dict(checkpoint["val_source"])
    rng_states = checkpoint.get("rng_states") or []
    if len(rng_states) == world_size:
        restore_rng(rng_states[rank])
    state["step"] = int(checkpoint["global_step"])
