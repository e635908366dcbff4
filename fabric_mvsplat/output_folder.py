"""The output-folder policy: one live run per folder (a lock the OS drops when its holder dies, even by kill -9),
folders checked writable before any work, which checkpoint `checkpointing.load=latest` means, what a fresh run
refuses, where the run's config and log land (only once it has started), and the clean-up of checkpoint writes an
earlier kill interrupted.

The lock is an exclusive `flock` (POSIX) or `msvcrt.locking` (Windows) on `<folder>/.fabric_mvsplat.lock`; the
file also names its holder (pid, host, start time, command) for the message a second run gets. Only the process
holding the lock removes the file, and a run that takes the lock checks that the file it locked is still the one
at that path (else it retries), so removing it never lets two runs in.
"""

import json
import logging
import logging.handlers
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lightning_fabric import Fabric

from .checkpoint import latest_checkpoint, remove_stray_temporaries
from .config import LATEST_CHECKPOINT, RootCfg
from .errors import CheckpointError, ConfigError, OutputFolderError, UserError
from .evaluation.test_mode import test_results_dir
from .file_lock import try_lock

log = logging.getLogger(__name__)


LOCK_NAME = ".fabric_mvsplat.lock"
PROBE_NAME = ".fabric_mvsplat.write_test"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job-log format

class FolderLock:
    """`with FolderLock(folder, key):` holds `folder` for this process; raises OutputFolderError naming the other
    run when one holds it. `folder` is created if absent, and removed again on release if this lock created it
    and the run wrote nothing into it (a failed start leaves nothing behind)."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = Path(folder), key
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []  # the folders acquire() created, deepest first

    def acquire(self) -> "FolderLock":
        self.created = _missing_folders(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputFolderError(self.key, self.folder, f"cannot be created ({error.strerror})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                self._remove_created_folder()
                raise OutputFolderError(self.key, self.folder, f"is not writable ({error.strerror})") from None
            try:
                taken = try_lock(fd)
            except OSError as error:  # a filesystem without locks (some network mounts): run unguarded
                print(f"fabric_mvsplat: {self.key}={self.folder}: this filesystem does not support file locks "
                      f"({error.strerror}); a second run started on this folder would not be detected",
                      file=sys.stderr)
                taken = True
            if not taken:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputFolderError(self.key, self.folder, f"is in use by another run ({holder}): wait for it "
                                        f"to end, or give this run another {self.key}")
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and lock: lock the new one
        self.fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(holder).encode())
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a run waiting on this file retries on the new one
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        for folder in self.created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                return

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 65536).decode())
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its lock file names no holder yet"


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist, deepest first."""
    missing = []
    for place in [Path(folder), *Path(folder).parents]:
        if place.exists():
            break
        missing.append(place)
    return missing


def check_writable(folder: Path, key: str) -> None:
    """OutputFolderError unless a file can be created in `folder` and in each of its existing sub-folders (a run
    writes into them); nothing is left behind. A folder that does not exist yet is checked by its nearest existing
    parent's permissions, without creating anything."""
    folder = Path(folder)
    missing = _missing_folders(folder)
    if missing:
        parent = missing[-1].parent
        if not parent.is_dir():
            raise OutputFolderError(key, folder, f"cannot be created: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputFolderError(key, folder, f"cannot be created: {parent} is not writable")
        return
    for place in [folder, *(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        probe = place / PROBE_NAME
        try:
            with open(probe, "wb") as file:
                file.write(b"0")
        except OSError as error:
            where = "" if place == folder else f" (its sub-folder {place.name})"
            raise OutputFolderError(key, folder, f"is not writable{where}: {error.strerror}") from None
        finally:
            try:
                probe.unlink()
            except OSError:
                pass


class RunLog:
    """The run's log file, `<output_dir>/train.log`: records logged before the run starts are held in memory and
    written once `open()` names the folder, so a run that stops at start-up leaves no log file behind."""

    def __init__(self) -> None:
        self.buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        self.buffer.setFormatter(logging.Formatter(LOG_FORMAT))
        self.file: logging.FileHandler | None = None

    def install(self) -> "RunLog":
        logging.getLogger().addHandler(self.buffer)
        return self

    def open(self, path: Path) -> None:
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter(LOG_FORMAT))
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        root = logging.getLogger()
        root.removeHandler(self.buffer)
        root.addHandler(self.file)

    def close(self) -> None:
        root = logging.getLogger()
        for handler in (self.buffer, self.file):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()


def resolve_latest(cfg: RootCfg, output_dir: Path) -> None:
    """checkpointing.load=latest: the newest checkpoint of this run history in output_dir/checkpoints
    (checkpoint.latest_checkpoint: another history's later checkpoints are left out), or a fresh start when there
    is none (training), so a requeued job runs the same command line."""
    if cfg.checkpointing.load != LATEST_CHECKPOINT:
        return
    found = latest_checkpoint(Path(output_dir) / "checkpoints")
    if found is not None:
        cfg.checkpointing.load = str(found)
        print(f"fabric_mvsplat: checkpointing.load={LATEST_CHECKPOINT} -> {found}", file=sys.stderr)
    elif cfg.mode == "test":
        raise CheckpointError(f"checkpointing.load={LATEST_CHECKPOINT} found no checkpoint in "
                              f"{Path(output_dir) / 'checkpoints'}; point checkpointing.load at a checkpoint file")
    else:
        cfg.checkpointing.load = None
        print(f"fabric_mvsplat: checkpointing.load={LATEST_CHECKPOINT}: no checkpoint in "
              f"{Path(output_dir) / 'checkpoints'}, starting fresh", file=sys.stderr)


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


@contextmanager
def claim_output_folders(fabric: Fabric, cfg: RootCfg, output_dir: Path):
    """Before any work, on rank 0: hold the folder this run writes its results into (training and inspect:
    output_dir; test mode: test.output_path/<wandb.name>), so that a second run on it stops with a line naming this
    one, and check that every folder it writes is writable. Every rank raises the same error when rank 0 could not.
    A training run then removes the temporary files an earlier, killed run left (only the folder's holder may)."""
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
        if fabric.global_rank == 0:
            log.info(f"output directory: {output_dir}")  # through logging: it lands in output_dir/train.log too
        if lock is not None and cfg.mode == "train":
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
