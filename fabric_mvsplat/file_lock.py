"""Exclusive locks the operating system drops when their holder exits, however it exits (kill -9 included): `flock`
on POSIX, `msvcrt.locking` of the first byte on Windows. Used for the output folder (output_folder.py) and the JIT
builds of the rasterizers (model/decoder/build_lock.py)."""

import errno
import os
import time

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None


def try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting: True if taken, False if another process holds it. OSError where
    the filesystem has no locks."""
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


def wait_lock(fd: int, poll_seconds: float = 0.5) -> None:
    """Take the exclusive lock, waiting as long as another process holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while not try_lock(fd):
        time.sleep(poll_seconds)


def unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
