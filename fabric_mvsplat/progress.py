"""Progress a log file can show: `step N/total` with an ETA, and one line of advice when the machine is busy.

tqdm's bar is only drawn on a terminal; a run whose output goes to a file (nohup, SLURM) sees only the log lines,
so they carry the step count and the time left themselves.
"""

import os
import time


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 7 -> '7s'."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StepClock:
    """`step N/total` and the time left, from the mean wall time per step since this run (or resume) started:
    validation and checkpoint time included, as they will recur."""

    def __init__(self, start_step: int, total: int | None, clock=time.perf_counter) -> None:
        self.start_step, self.total, self.clock = start_step, total, clock
        self.started = clock()

    def step_of_total(self, step: int) -> str:
        return f"step {step}/{self.total}" if self.total is not None else f"step {step}"

    def eta(self, step: int) -> str:
        """'ETA 1h02m (2.7 s/step)'; '' before the first step or without a total."""
        done = step - self.start_step
        if self.total is None or done <= 0:
            return ""
        per_step = (self.clock() - self.started) / done
        return f"ETA {format_duration(per_step * max(self.total - step, 0))} ({per_step:.2f} s/step)"


def busy_machine_advice(load_average: float, cores: int, threads: int) -> str | None:
    """One line when the 1-minute load average already exceeds the cores, else None."""
    if load_average <= cores:
        return None
    return (f"the machine is busy: load average {load_average:.1f} on {cores} cores before this run starts, so it "
            f"will run several times slower than on an idle machine. With {threads} torch thread(s) per process, "
            "threads wait on each other under contention: OMP_NUM_THREADS=1 uses less CPU per step and loses less "
            "(docs/performance.md, 'A busy machine'); or run when the machine is idle")


def usable_cores() -> int:
    """The cores this process may run on (a container's or a job's share, where the platform says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def advise_if_busy() -> str | None:
    """busy_machine_advice for this machine now; None where the platform has no load average (Windows)."""
    import torch

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has none
        return None
    return busy_machine_advice(load, usable_cores(), torch.get_num_threads())
