"""The folders a run writes into: one live run per folder (a lock the OS drops when its holder dies, even by
kill -9), checked writable before any work, and the run's log file opened only once the run has started.

The lock is an exclusive `flock` (POSIX) or `msvcrt.locking` (Windows) on `<folder>/.fabric_mvsplat.lock`; the
file also names its holder (pid, host, start time, command) for the message a second run gets. Only the process
holding the lock removes the file, and a run that takes the lock checks that the file it locked is still the one
at that path (else it retries), so removing it never lets two runs in.
"""

import errno
import json
import logging
import logging.handlers
import os
import socket
import sys
import time
from pathlib import Path

from .errors import OutputFolderError

LOCK_NAME = ".fabric_mvsplat.lock"
PROBE_NAME = ".fabric_mvsplat.write_test"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job-log format

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting: True if taken, False if another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        raise


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
                taken = _try_lock(fd)
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
