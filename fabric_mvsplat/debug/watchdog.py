"""The hang watchdog: a daemon thread per rank that notices when the loop makes no progress.

The loop calls `beat(what, step)` when a training step, a validation or a checkpoint save begins. When the time
since the last beat exceeds the limit, every rank writes the Python stacks of all its threads to
output_dir/hang/rank_<r>.txt; rank 0 then reads the other ranks' files (a filesystem shared by the ranks, as
output_dir already is for checkpoints) and prints one line per rank naming the function and line its main
thread waits in. A slow step is not an error: the run keeps waiting (and says so when it moves again) unless
exit_on_hang asks the process to end.

The thread reads the other threads' frames with the GIL, so a hang inside native code that holds the GIL
(rare: torch's collectives and kernels release it) stops the watchdog too; `py-spy dump --pid` still works then.
"""

import os
import socket
import statistics
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path

from ..config import WatchdogCfg

EXIT_HANG = 124  # as coreutils' timeout
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
STEPS_FOR_MEDIAN = 3  # steps measured before the automatic limit follows the median step
SECONDS_TO_COLLECT = 60.0  # how long rank 0 waits for the other ranks' stack files
TRAINING_STEP = "training step"  # the beats whose intervals the automatic limit's median is taken over


def watchdog_enabled(cfg: WatchdogCfg, world_size: int) -> bool:
    return cfg.enabled if cfg.enabled is not None else world_size > 1


class Watchdog:
    def __init__(self, cfg: WatchdogCfg, output_dir: Path, rank: int, world_size: int,
                 poll_seconds: float = 1.0) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.directory = Path(output_dir) / "hang"
        self.enabled = watchdog_enabled(cfg, world_size)
        self.poll_seconds = poll_seconds
        self.what, self.since = "start", time.monotonic()
        self.what_kind = self.what  # `what` without its step: whether the time since is a training step's
        self.step_seconds: deque[float] = deque(maxlen=100)  # the latest training steps
        self.reported = 0  # how many hangs were reported (the files of the current one carry this number)
        self.hanging = False
        self.main_thread_id = threading.main_thread().ident
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = None
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="fabric_mvsplat-watchdog", daemon=True)
            self._thread.start()

    # ---- called by the loop ------------------------------------------------------------------------------
    def beat(self, what: str, step: int | None = None) -> None:
        """`what` (e.g. TRAINING_STEP, 12) begins; the previous one is done. Off, it returns at once: the label is
        formatted only when on."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if self.what_kind == TRAINING_STEP:
                self.step_seconds.append(now - self.since)
            if self.hanging and self.rank == 0:
                print(f"fabric_mvsplat: watchdog: progress again after {now - self.since:.0f} s in {self.what}",
                      file=sys.stderr, flush=True)
            self.what_kind, self.since, self.hanging = what, now, False
            self.what = what if step is None else f"{what} {step}"

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---- the thread --------------------------------------------------------------------------------------
    def limit(self) -> float:
        if self.cfg.timeout is not None:
            return self.cfg.timeout
        if len(self.step_seconds) < STEPS_FOR_MEDIAN:  # the first steps (compilation, warm-up) take longer
            return 3 * self.cfg.min_timeout
        return max(self.cfg.min_timeout, 20 * statistics.median(self.step_seconds))

    def _watch(self) -> None:
        while not self._stopped.wait(self.poll_seconds):
            with self._lock:
                waited, what, limit = time.monotonic() - self.since, self.what, self.limit()
                if self.hanging or waited <= limit:
                    continue
                self.hanging = True
                self.reported += 1
                number = self.reported
            self._report(number, what, waited, limit)

    def _report(self, number: int, what: str, waited: float, limit: float) -> None:
        header = (f"hang {number}: rank {self.rank} of {self.world_size} (pid {os.getpid()}, host "
                  f"{socket.gethostname()}): no progress for {waited:.0f} s in {what} (limit {limit:.0f} s)")
        write_stacks(self.directory / f"rank_{self.rank}.txt", header, self.main_thread_id)
        if self.rank == 0:
            print(f"fabric_mvsplat: watchdog: {what} has taken {waited:.0f} s (limit {limit:.0f} s); every "
                  f"rank's threads are in {self.directory}/rank_<r>.txt", file=sys.stderr, flush=True)
            for line in collect_summaries(self.directory, self.world_size, not_before=time.time() - waited):
                print(f"fabric_mvsplat: watchdog: {line}", file=sys.stderr, flush=True)
            print("fabric_mvsplat: watchdog: " + ("ending the process (debug.watchdog.exit_on_hang=true)"
                                                  if self.cfg.exit_on_hang else "still waiting (a slow step is "
                                                  "not an error; debug.watchdog.exit_on_hang=true ends the run)"),
                  file=sys.stderr, flush=True)
        if self.cfg.exit_on_hang:
            if self.rank == 0:  # give the other ranks' reports time to land before torchrun stops them
                time.sleep(1.0)
            else:
                time.sleep(SECONDS_TO_COLLECT if self.world_size > 1 else 0)
            os._exit(EXIT_HANG)  # from a thread: sys.exit would end only this thread


def where_waiting(frames: list[traceback.FrameSummary]) -> str:
    """The innermost frame, and the innermost frame of this package when that is another one."""
    if not frames:
        return "no Python frame"

    def place(frame: traceback.FrameSummary) -> str:
        return f"{frame.name} ({shorten(frame.filename)}:{frame.lineno})"

    innermost = frames[-1]
    ours = next((f for f in reversed(frames) if f.filename.startswith(PACKAGE_DIR)), None)
    if ours is None or ours is innermost:
        return place(innermost)
    return f"{place(innermost)}, called from {place(ours)}"


def shorten(filename: str) -> str:
    """Paths inside this package relative to its parent; site-packages paths from the package name on."""
    parent = str(Path(PACKAGE_DIR).parent) + os.sep
    if filename.startswith(parent):
        return filename[len(parent):]
    marker = f"site-packages{os.sep}"
    return filename.split(marker, 1)[1] if marker in filename else filename


def write_stacks(path: Path, header: str, main_thread_id: int | None) -> None:
    """Line 1: the header; line 2: where the main thread waits; then every thread's full stack. Atomic."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    frames = sys._current_frames()  # the documented way to read other threads' stacks
    main = traceback.extract_stack(frames[main_thread_id]) if main_thread_id in frames else []
    lines = [header, f"main thread waits in {where_waiting(main)}", ""]
    for ident, frame in frames.items():
        if ident == threading.get_ident():
            continue  # the watchdog itself
        lines.append(f"--- thread {names.get(ident, '?')} ({ident}) ---")
        lines.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, path)


def collect_summaries(directory: Path, world_size: int, not_before: float,
                      seconds: float = SECONDS_TO_COLLECT) -> list[str]:
    """One line per rank from the ranks' files written since the hang began (`not_before`, wall clock),
    waiting up to `seconds` for them to appear."""
    deadline = time.monotonic() + seconds
    found: dict[int, str] = {}
    while True:
        for rank in range(world_size):
            if rank in found:
                continue
            path = directory / f"rank_{rank}.txt"
            try:
                if path.stat().st_mtime < not_before:
                    continue  # an earlier hang's file
                header, waits = path.read_text().splitlines()[:2]
            except (OSError, ValueError):
                continue
            found[rank] = f"rank {rank}: {waits}"
        if len(found) == world_size or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return [found.get(rank, f"rank {rank}: no stack file for this hang (its watchdog is off, it is on another "
                            "filesystem, or it holds the GIL in native code)") for rank in range(world_size)]


def stall_if_asked(stall, step: int, rank: int) -> None:
    """debug.stall: this rank sleeps before the step's forward, as a rank stuck in I/O or a deadlock would."""
    if stall is not None and stall.step == step and stall.rank == rank:
        print(f"fabric_mvsplat: debug.stall: rank {rank} sleeps {stall.seconds:.0f} s before step {step}",
              file=sys.stderr, flush=True)
        time.sleep(stall.seconds)
