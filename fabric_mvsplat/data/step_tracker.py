"""The training step, shared with DataLoader worker processes (the bounded sampler's warm-up reads it)."""

import torch


class StepTracker:
    """A 0-d int64 tensor in shared memory: pickled into workers, every copy sees the same value.

    Filling one int64 is atomic, so no lock (the original's Manager lock spawned a process for nothing).
    """

    def __init__(self, step: int = 0) -> None:
        self.step = torch.tensor(step, dtype=torch.int64).share_memory_()

    def set_step(self, step: int) -> None:
        self.step.fill_(int(step))

    def get_step(self) -> int:
        return int(self.step.item())
