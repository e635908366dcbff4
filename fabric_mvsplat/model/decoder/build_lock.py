"""One JIT build at a time per build directory, and none waiting forever on a build that was stopped.

torch.utils.cpp_extension guards a build directory with a lock file it creates and deletes. A process killed while
it builds (Ctrl-C, SIGKILL, a pre-empted job) leaves that file behind, and every later load of the extension, even
of a library already built, waits on it forever, printing nothing. The CPU rasterizer (about 30 s to compile) and
gsplat's CUDA kernels (minutes) are both built this way on first use.
"""

import contextlib
import os
import sys
from pathlib import Path

from ...file_lock import try_lock, unlock, wait_lock

TORCH_LOCK = "lock"  # the file torch's FileBaton creates in the build directory


@contextlib.contextmanager
def build_lock(directory: Path, what: str):
    """Held around torch's load() (or an import that calls it) of the extension built in `directory`: an
    operating-system lock, released when its holder exits however it exits. Under it no other process of ours is
    building there, so a torch lock file it finds is stale: it is removed, with one line saying so. `what` names the
    extension in the line said while waiting for another process."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "fabric_mvsplat.flock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            taken = try_lock(fd)
        except OSError as error:  # a filesystem without locks (some network mounts): build as torch alone would
            print(f"fabric_mvsplat: {directory} is on a filesystem without file locks ({error.strerror}): if a build "
                  f"there is stopped midway, delete {directory / TORCH_LOCK} before the next run", file=sys.stderr)
            yield
            return
        if not taken:
            print(f"fabric_mvsplat: waiting for another process compiling {what} in {directory}", file=sys.stderr,
                  flush=True)
            wait_lock(fd)
        try:
            stale = directory / TORCH_LOCK
            if stale.exists():
                print(f"fabric_mvsplat: removed {stale}, left by a build that was stopped", file=sys.stderr)
                stale.unlink(missing_ok=True)
            yield
        finally:
            unlock(fd)
    finally:
        os.close(fd)
