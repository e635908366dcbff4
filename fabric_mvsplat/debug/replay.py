"""Replay a diverged step: the command a divergence error prints, and what the replaying run does.

The command resumes from the newest checkpoint at or before the diverged global step k, into its own folder
(output_dir/replay_step_k, so the run's own events and checkpoints stay as they are), with
debug.replay_step=k. That run trains exactly as the original did from the checkpoint (a resume restores the
weights, optimizer, schedule, data position and RNG states) and, at step k only, switches on torch's anomaly
detection and a check of every module's forward output: it prints the step's scenes and loss, the first
module whose output is not finite, and anomaly detection names the backward operation that produced a NaN.
It validates and saves nothing, and ends after step k.

This reproduces the step only where training is deterministic: on CPU with the same threads, or with
trainer.deterministic=true on CUDA with torch's own kernels; gsplat's CUDA rasterizer and a changed number of
ranks or DataLoader workers can change the numbers.
"""

import sys
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import list_checkpoints
from ..shell_command import override_key, train_command

REPLACED_KEYS = ("output_dir", "checkpointing.load", "checkpointing.resume", "debug.replay_step")


def replay_command(output_dir: Path, step: int, overrides: list[str], world_size: int, num_nodes: int = 1) -> str:
    """The shell command (quoted for a POSIX shell, its values for Hydra: shell_command) that replays global step
    `step` of the run in `output_dir` from its newest checkpoint at or before that step (from the start when there
    is none)."""
    output_dir = Path(output_dir)
    before = [path for saved_step, path in list_checkpoints(output_dir / "checkpoints") if saved_step <= step]
    settings = {"output_dir": str(output_dir / f"replay_step_{step}"), "debug.replay_step": str(step)}
    replaced = REPLACED_KEYS
    if before:
        settings |= {"checkpointing.load": str(before[-1]), "checkpointing.resume": "true"}
    else:  # from the same start as the run (its own checkpointing.load, if any, stays)
        replaced = ("output_dir", "debug.replay_step")
    kept = [o for o in overrides if override_key(o) not in replaced]
    return train_command(kept, settings, world_size, num_nodes)


class NonFiniteForward:
    """Forward hooks on every module: remembers the first (in execution order) whose output is not finite."""

    def __init__(self, model: nn.Module) -> None:
        self.first: str | None = None
        self.handles = [module.register_forward_hook(self._check(name or "<model>"))
                        for name, module in model.named_modules()]

    def _check(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            if self.first is None and any(not torch.isfinite(t).all() for t in tensors_in(output)):
                self.first = f"{name} ({type(module).__name__})"
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value.detach()] if value.is_floating_point() else []
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for name in value.__dataclass_fields__ for t in tensors_in(getattr(value, name))]
    return []


class Replay:
    """What a run with debug.replay_step=k does differently at step k. Without it every call returns at once."""

    def __init__(self, replay_step: int | None, model: nn.Module, is_rank_zero: bool) -> None:
        self.step, self.model, self.is_rank_zero = replay_step, model, is_rank_zero
        self.watch: NonFiniteForward | None = None

    @property
    def active(self) -> bool:
        return self.step is not None

    def before_step(self, step: int) -> None:
        if step != self.step:
            return
        self.say(f"step {step}: anomaly detection and a finiteness check of every module's output are on")
        torch.autograd.set_detect_anomaly(True)  # until the loop's own anomaly setting is restored at its end
        self.watch = NonFiniteForward(self.model)

    def after_forward(self, step: int, loss: torch.Tensor, scenes) -> None:
        """Before backward (which anomaly detection may end with its error): what the forward produced."""
        if step != self.step or self.watch is None:
            return
        value = loss.detach().float().item()
        first = self.watch.first or "none"
        print(f"fabric_mvsplat: replay: step {step}: scenes {list(scenes)}: loss {value}; first module with a "
              f"non-finite forward output: {first}", file=sys.stderr, flush=True)

    def finished(self, steps_done: int) -> bool:
        """After the optimizer step; True once the replayed step is done (the loop then ends)."""
        if self.step is None or steps_done != self.step + 1:
            return False
        if self.watch is not None:
            self.watch.remove()
        self.say(f"step {self.step} ended without an anomaly error (a non-finite loss or gradient norm is reported "
                 "next, if there was one); if the run diverged there, it did not reproduce: see "
                 "docs/debugging.md, 'Replay a diverged step'")
        return True

    def say(self, message: str) -> None:
        if self.is_rank_zero:
            print(f"fabric_mvsplat: replay: {message}", file=sys.stderr, flush=True)
