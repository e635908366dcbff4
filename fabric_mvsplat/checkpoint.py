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
    lineage            file names of the checkpoints before this one in its run history (same folder, oldest
                       first): a resume continues that history, whatever else the folder holds
    scenes_per_step    {world_size, batch_size, accumulate_grad_batches}: what one global step meant
    content_sha256     SHA-256 of each entry above, added by save_atomically, verified by load_file
                       (files without it, e.g. the original's released checkpoints, load unverified)

The training objects travel in one plain `state` dict (see loop.fit); `save_checkpoint` / `restore_checkpoint`
below turn it into this layout and back, side by side.
"""

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import safe_load
from .distributed import gather_objects
from .errors import CheckpointError, DiskFullError, is_disk_full  # noqa: F401 (callers import them from here)
from .strict_load import load_weights_strict

CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)-step_(\d+)\.ckpt$")
LIGHTNING_VERSION = "2.2.4"  # the original's pin; Lightning's loader reads this key
CONTENT_HASH_KEY = "content_sha256"  # {top-level key: SHA-256 of its content}, checked by load_file
TEMPORARY_SUFFIX = ".tmp"  # `.<name>.ckpt.tmp` while a write is in progress
LINEAGE_KEY = "lineage"
# Beside the checkpoints folder (in output_dir), rewritten after every save: {"checkpoint": the file just written,
# "lineage": its history's files, oldest first, "other_histories": the folder's other checkpoints}. Read by
# checkpointing.load=latest, which leaves the other histories out.
LATEST_RECORD = "latest_checkpoint.json"



def checkpoint_path(directory: Path, epoch: int, step: int) -> Path:
    return Path(directory) / f"epoch_{epoch}-step_{step}.ckpt"


def save_atomically(checkpoint: dict, path: Path) -> None:
    """Add the content hash, write to a hidden temporary file, fsync, then rename: a crash or kill never leaves
    a truncated `path` and never touches the earlier checkpoints; a full disk raises one CheckpointError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")
    payload = {**checkpoint, CONTENT_HASH_KEY: content_hashes(checkpoint)}
    try:
        with open(tmp, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        raise DiskFullError(_disk_full_message(path)) from error
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(directory)
    finally:
        os.close(directory)


def _disk_full_message(path: Path) -> str:
    earlier = sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=_step_of)
    free = shutil.disk_usage(path.parent).free / 2**20
    if earlier:
        kept = (f"the earlier checkpoints are intact ({', '.join(p.name for p in earlier[-3:])}); "
                f"after freeing space resume with checkpointing.load={earlier[-1]}")
    else:
        kept = "there is no earlier checkpoint in that folder"
    return (f"no space left on the device while writing checkpoint {path} ({free:.0f} MiB free there); "
            f"the partial file was removed and {kept}. Free space or set output_dir on a larger disk")


def _step_of(path: Path) -> int:
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(2)) if match else -1


def remove_stray_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a kill interrupted; returns what was removed.

    Call it only from the run that owns `directory`, before it saves (a live writer's file would go too).
    """
    removed = []
    for stray in Path(directory).glob(f".*.ckpt{TEMPORARY_SUFFIX}"):
        if stray.is_file():
            stray.unlink(missing_ok=True)
            removed.append(stray)
    return sorted(removed)


def content_hashes(checkpoint: dict) -> dict[str, str]:
    """SHA-256 of every top-level entry: its key and content (tensor bytes, dtypes, shapes, keys, plain values).

    The key is hashed too: pickle stores each string once, so a damaged key would rename the hash's key as well.
    """
    hashes = {}
    for key, value in checkpoint.items():
        if key == CONTENT_HASH_KEY:
            continue
        digest = hashlib.sha256()
        _feed(digest, key, str(key))
        _feed(digest, value, str(key))
        hashes[str(key)] = digest.hexdigest()
    return hashes


def _feed(digest, value: Any, where: str) -> None:
    """Hash a value as torch.load(weights_only=True) gives it back: same types, order and bytes."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().resolve_conj().resolve_neg()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        if tensor.numel():
            digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key, where)
            _feed(digest, item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'T'}{len(value)}:".encode())
        for index, item in enumerate(value):
            _feed(digest, item, f"{where}[{index}]")
    elif value is None or isinstance(value, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"checkpoint entry {where} is a {type(value).__name__}: a checkpoint holds only tensors, "
                        "numbers, strings, lists and dicts (what torch.load(weights_only=True) reads)")


def verify_content_hashes(checkpoint: dict, path: Path) -> None:
    """Refuse a checkpoint whose content differs from the hashes stored when it was written (no hash: trusted)."""
    if CONTENT_HASH_KEY not in checkpoint:
        return  # a released Lightning checkpoint or one written before hashes existed
    stored = checkpoint.pop(CONTENT_HASH_KEY)
    fix = (f"use an earlier checkpoint from the same folder; if you edited the file on purpose, delete its "
           f"'{CONTENT_HASH_KEY}' entry to load it unverified")
    if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
        raise CheckpointError(f"checkpoint corrupted: {path}: its '{CONTENT_HASH_KEY}' entry is damaged; {fix}")
    try:
        actual = content_hashes(checkpoint)
    except TypeError as error:  # an object only an unsafe load can return: not what was written
        raise CheckpointError(f"checkpoint corrupted: {path}: {error}; {fix}") from error
    changed = sorted(set(stored) ^ set(actual)) + [k for k in stored if k in actual and stored[k] != actual[k]]
    if changed:
        raise CheckpointError(
            f"checkpoint corrupted: {path}: the content of {', '.join(changed)} does not match the SHA-256 "
            f"stored when it was written (bytes changed on disk or in transfer); {fix}")


def rotate(directory: Path, save_top_k: int, history: list[str] | None = None) -> list[Path]:
    """Keep the `save_top_k` newest checkpoints (-1 keeps all); returns the kept files, newest first.

    history: the file names of this run's history (Lineage.names); only those are candidates, so the checkpoints
    of another history in the same folder never push this run's out, and are never deleted. None: every
    checkpoint in `directory`. The monitored value of the original is `info/global_step` in mode max, so
    "best" = newest.
    """
    found = list_checkpoints(directory)[::-1]  # newest first
    if history is not None:
        found = [(step, path) for step, path in found if path.name in history]
    keep = found if save_top_k == -1 else found[:save_top_k]
    for _, path in found[len(keep):]:
        path.unlink(missing_ok=True)
    return [path for _, path in keep]


class Lineage:
    """The checkpoints of this run's history in its checkpoints folder (names, oldest first), and the folder's
    other checkpoints, which belong to another history.

    A fresh run starts an empty history. A resume from a checkpoint in this folder continues that checkpoint's
    history (its ancestors, as it recorded them, then itself). The folder may also hold checkpoints of another
    history, e.g. the later steps of the run a resume from an earlier step branched off: they are never rotated,
    and `checkpointing.load=latest` skips them (LATEST_RECORD names them), so `latest` means this history's newest.
    """

    def __init__(self, directory: Path, names: list[str], start: str | None) -> None:
        self.directory, self.names, self.start = Path(directory), names, start
        self.others = [path.name for _, path in list_checkpoints(self.directory) if path.name not in names]

    @classmethod
    def for_run(cls, directory: Path, resumed_from: str | Path | None, recorded: list[str] | None) -> "Lineage":
        """recorded: the resumed checkpoint's own `lineage` entry (None for files written before it existed:
        then the folder's checkpoints before its step count as its history, as top-k rotation had kept them)."""
        directory = Path(directory)
        if resumed_from is None or Path(resumed_from).resolve().parent != directory.resolve():
            return cls(directory, [], None)  # a fresh start, or a checkpoint from elsewhere (never rotated)
        start = Path(resumed_from).name
        if recorded is None:
            recorded = [path.name for step, path in list_checkpoints(directory) if step < _step_of(Path(start))]
        return cls(directory, [*recorded, start], start)

    def others_after_start(self) -> list[str]:
        """The other histories' checkpoints with a later step than this run's start."""
        start_step = _step_of(Path(self.start)) if self.start else -1
        return [name for name in self.others if _step_of(Path(name)) > start_step]

    def ancestors(self) -> list[str]:
        """What the next checkpoint records as its lineage."""
        return list(self.names)

    def saved(self, path: Path, save_top_k: int) -> None:
        """After `path` was written: add it, rotate within the history, record the folder's state for `latest`."""
        self.names = [name for name in self.names if name != path.name] + [path.name]
        self.others = [name for name in self.others if name != path.name]  # a file of that name is now ours
        kept = {p.name for p in rotate(self.directory, save_top_k, self.names)}
        self.names = [name for name in self.names if name in kept]
        record = latest_record(self.directory)
        temporary = record.with_name(record.name + TEMPORARY_SUFFIX)
        temporary.write_text(json.dumps({"checkpoint": path.name, "lineage": self.names,
                                         "other_histories": self.others}))
        os.replace(temporary, record)


def latest_record(directory: Path) -> Path:
    """Beside the checkpoints folder: output_dir/latest_checkpoint.json."""
    return Path(directory).parent / LATEST_RECORD


def latest_checkpoint(directory: Path) -> Path | None:
    """`checkpointing.load=latest`: the checkpoint with the highest step in `directory`, leaving out those that the
    run which wrote last recorded as another history's (LATEST_RECORD); None when there is none."""
    directory = Path(directory)
    try:
        others = {str(name) for name in json.loads(latest_record(directory).read_text())["other_histories"]}
    except (OSError, ValueError, KeyError, TypeError):
        others = set()  # no record (a folder from before it existed): every checkpoint counts
    found = [path for _, path in list_checkpoints(directory) if path.name not in others]
    return found[-1] if found else None


def load_file(path: str | Path, allow_unsafe_load: bool = False) -> dict:
    """The checkpoint at `path` on CPU (weights_only unless opted out), content hash verified; every failure
    names the file and the fix."""
    path = Path(path)
    try:
        checkpoint = safe_load.load(path, "checkpoint file", allow_unsafe_load,
                                    opt_in_key="checkpointing.allow_unsafe_load")
    except safe_load.FileLoadError as error:
        fix = {"missing": " (set by checkpointing.load)", "directory": " (set by checkpointing.load)",
               "pickled_objects": ""}.get(error.reason, "; use an earlier checkpoint from the same folder")
        raise CheckpointError(f"{error}{fix}") from error
    if isinstance(checkpoint, dict):
        verify_content_hashes(checkpoint, path)
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
    the top k of this run's history (state["lineage"], a Lineage; see there). All ranks return the path."""
    per_rank = gather_objects(fabric, {"train_stream": state["train_stream"].state_dict(), "rng": capture_rng()})
    epoch = int(getattr(state["train_stream"], "epoch", 0))  # the pass over the training scenes
    path = checkpoint_path(directory, epoch, state["step"])
    if fabric.global_rank == 0:
        lineage = state.get("lineage") or Lineage(directory, [], None)
        save_atomically(make_checkpoint(state, per_rank, epoch, lineage.ancestors()), path)
        lineage.saved(path, save_top_k)
    fabric.barrier()
    return path


def make_checkpoint(state: dict, per_rank: list[dict], epoch: int, lineage: list[str] | None = None) -> dict:
    """state (see loop.fit) + every rank's {"train_stream", "rng"} + the names of the checkpoints before it in its
    history -> the checkpoint dict."""
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
        LINEAGE_KEY: list(lineage or []),
    }
    if state.get("scenes_per_step") is not None:
        checkpoint["scenes_per_step"] = dict(state["scenes_per_step"])
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
    # Where this run's history starts (loop.fit turns it into a Lineage for the checkpoints folder).
    recorded = checkpoint.get(LINEAGE_KEY)
    state["resumed_from"] = {"path": str(path), "lineage": [str(name) for name in recorded] if recorded is not None
                             else None, "scenes_per_step": checkpoint.get("scenes_per_step")}
