"""The one guarded `torch.load`: chunks, checkpoints, weights (LPIPS, UniMatch) and golden files all read here.

`weights_only=True` always (tensors, numbers, strings and containers; a pickled object is refused, never
executed); unpickling arbitrary objects is an explicit opt-in that only callers with a config key for it offer.
Every failure raises `FileLoadError` with one message naming the file and what is wrong with it.
"""

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6
# torch < 1.6 (or `_use_new_zipfile_serialization=False`): a pickle (protocol 2) of torch's magic number first
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
WEIGHT_SUFFIXES = (".ckpt", ".pth", ".pt", ".torch", ".bin")


class FileLoadError(RuntimeError):
    """A file handed to `load` cannot be read; `reason` says why (missing, directory, empty, not_torch, corrupt,
    legacy_corrupt, pickled_objects)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def load(path: str | Path, what: str = "file", allow_unsafe_load: bool = False,
         opt_in_key: str | None = None) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)` with every failure named.

    what: how the message calls the file, e.g. "checkpoint file" or "data chunk".
    allow_unsafe_load / opt_in_key: the caller's explicit opt-in (e.g. `checkpointing.allow_unsafe_load`) to load
    pickled Python objects with weights_only=False; without an opt_in_key a pickled object is always refused.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        listing = f"; it holds {', '.join(inside[-5:])}" if inside else ""
        raise FileLoadError("directory", f"{what} {path} is a directory, not a file: point at one file"
                            f"{' inside it' if inside else ''}{listing}")
    if not path.is_file():
        raise FileLoadError("missing", f"{what} {path} does not exist")
    with open(path, "rb") as file:
        head = file.read(len(LEGACY_MAGIC))
    if not head:
        raise FileLoadError("empty", f"{what} {path} is empty (0 bytes): its write never completed")
    legacy = head == LEGACY_MAGIC
    if not head.startswith(ZIP_MAGIC) and not legacy:
        raise FileLoadError("not_torch", f"{what} {path} is not a torch.save file (it starts with {head[:8]!r}, "
                            "neither a zip archive nor torch's legacy format): corrupt or another kind of file")
    kind = "an old non-zip torch.save file (torch < 1.6 or _use_new_zipfile_serialization=False)" if legacy else ""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_global(error)
        if refused is None:  # a damaged pickle stream, not a forbidden object
            raise _corrupt(what, path, kind, error) from error
        if opt_in_key is None or not allow_unsafe_load:
            fix = (f"if you trust the file, rerun with {opt_in_key}=true" if opt_in_key is not None else
                   "re-save it holding only tensors, numbers, strings, lists and dicts")
            raise FileLoadError("pickled_objects", f"torch.load(weights_only=True) refused {what} {path}: it "
                                f"contains pickled Python objects ({refused}). {fix[0].upper()}{fix[1:]}") from error
    except Exception as error:  # truncated zip, damaged records, out-of-range storage offsets, ...
        raise _corrupt(what, path, kind, error) from error
    # The explicit opt-in (off by default) for trusted files only.
    warnings.warn(f"loading {path} with weights_only=False ({opt_in_key}=true)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise _corrupt(what, path, kind, error) from error


def _refused_global(error: pickle.UnpicklingError) -> str | None:
    """The object weights_only refused ("GLOBAL module.name ..."), or None when the pickle itself is damaged."""
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"GLOBAL {match.group(1)}" if match else None


def _corrupt(what: str, path: Path, kind: str, error: Exception) -> FileLoadError:
    # torch's first sentence says what failed; the rest is generic advice
    detail = (str(error).strip().split(". ")[0].splitlines() or [type(error).__name__])[0][:200]
    if kind:
        return FileLoadError("legacy_corrupt", f"{what} {path} is {kind} and it is corrupt or truncated: {detail}")
    return FileLoadError("corrupt", f"{what} {path} is corrupt or truncated: {detail}")
