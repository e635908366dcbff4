"""Which frames of a scene become context and target views (`dataset/view_sampler/*.yaml`).

Every sampler draws from the generator it is given (seeded per scene by the stream), never from global RNG,
so a resumed run samples exactly what an uninterrupted one would have.
"""

import json
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..errors import ConfigError
from .config import (ViewSamplerAllCfg, ViewSamplerArbitraryCfg, ViewSamplerBoundedCfg, ViewSamplerCfg,
                     ViewSamplerEvaluationCfg)

Stage = Literal["train", "val", "test"]


class SceneRejected(ValueError):
    """A scene cannot be used; `reason` names the filter (counted per reason by the stream)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


def schedule(initial: int, final: int, step: int, warm_up_steps: int) -> int:
    """The original's linear warm-up, integer-truncated."""
    return min(initial + int((final - initial) * step / warm_up_steps), final)


class BoundedSampler:
    """Contexts `gap` frames apart, targets uniform (with replacement) between them.

    With `keep_min_gap_bug` (the original's default) the gap always equals the scheduled minimum gap.
    """

    def __init__(self, cfg: ViewSamplerBoundedCfg, stage: Stage, overfit: bool, cameras_are_circular: bool):
        self.cfg, self.stage, self.overfit, self.circular = cfg, stage, overfit, cameras_are_circular

    def gap_bounds(self, num_views: int, step: int) -> tuple[int, int]:
        cfg = self.cfg
        if self.stage == "test":
            min_gap = max_gap = cfg.max_distance_between_context_views
        elif cfg.warm_up_steps > 0:
            max_gap = schedule(cfg.initial_max_distance_between_context_views,
                               cfg.max_distance_between_context_views, step, cfg.warm_up_steps)
            min_gap = schedule(cfg.initial_min_distance_between_context_views,
                               cfg.min_distance_between_context_views, step, cfg.warm_up_steps)
        else:
            min_gap, max_gap = cfg.min_distance_between_context_views, cfg.max_distance_between_context_views
        if not self.circular:
            max_gap = min(num_views - 1, min_gap if cfg.keep_min_gap_bug else max_gap)
        min_gap = max(2 * cfg.min_distance_to_context_views, min_gap)
        return min_gap, max_gap

    def sample(self, key: str, num_views: int, generator: torch.Generator, step: int) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        min_gap, max_gap = self.gap_bounds(num_views, step)
        if max_gap < min_gap:
            raise SceneRejected("view_sampler", f"scene {key!r} has {num_views} frames, too few for a "
                                f"context gap of {min_gap} (bounded sampler at step {step})")
        gap = int(torch.randint(min_gap, max_gap + 1, (), generator=generator))
        left = int(torch.randint(num_views if self.circular else num_views - gap, (), generator=generator))
        if self.stage == "test":
            left = 0
        right = left + gap
        if self.overfit:
            left, right = 0, max_gap
        if self.stage == "test":
            target = torch.arange(left, right + 1)
        else:
            margin = cfg.min_distance_to_context_views
            target = torch.randint(left + margin, right + 1 - margin, (cfg.num_target_views,), generator=generator)
        # Extension beyond the original (always 2 contexts): extra contexts strictly between the outer two.
        middle: list[int] = []
        if cfg.num_context_views > 2:
            if right - left - 1 < cfg.num_context_views - 2:
                raise SceneRejected("view_sampler", f"scene {key!r}: gap {right - left} leaves no room for "
                                    f"{cfg.num_context_views} distinct context views")
            picks = torch.randperm(right - left - 1, generator=generator)[: cfg.num_context_views - 2]
            middle = (picks.sort().values + left + 1).tolist()
        context = torch.tensor([left, *middle, right])
        if self.circular:
            context, target = context % num_views, target % num_views
        return context, target


def read_evaluation_index(cfg: ViewSamplerEvaluationCfg) -> dict[str, tuple[list[int], list[int]] | None]:
    """The index JSON {key: {"context": [...], "target": [...]} | null}, or a ConfigError naming
    dataset.view_sampler.index_path (the start-up check and the sampler both read it through here)."""
    path = Path(cfg.index_path)
    if not path.is_file():
        raise ConfigError("dataset.view_sampler.index_path", cfg.index_path,
                          "an existing evaluation index JSON (e.g. assets/evaluation_index_re10k.json, "
                          "relative to the directory you run from)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError("dataset.view_sampler.index_path", cfg.index_path, f"valid JSON ({error})") from error
    index: dict[str, tuple[list[int], list[int]] | None] = {}
    for key, entry in raw.items():
        if entry is not None and not (isinstance(entry, dict) and "context" in entry and "target" in entry):
            raise ConfigError("dataset.view_sampler.index_path", cfg.index_path,
                              f"entries with 'context' and 'target' lists or null; scene {key!r} has {entry!r}")
        index[key] = None if entry is None else (list(entry["context"]), list(entry["target"]))
    return index


class EvaluationSampler:
    """Fixed views per scene from an evaluation index (see read_evaluation_index)."""

    def __init__(self, cfg: ViewSamplerEvaluationCfg):
        self.index = read_evaluation_index(cfg)

    def lookup(self, key: str) -> tuple[list[int], list[int]]:
        """The entry for `key` (a DTU-style run name `<scene>_<run:02d>` under test_times_per_scene > 1),
        or SceneRejected: "not_in_index" when absent, "null_in_index" when the index holds null."""
        if key not in self.index:
            raise SceneRejected("not_in_index", f"scene {key!r} is missing from the evaluation index")
        entry = self.index[key]
        if entry is None:
            raise SceneRejected("null_in_index", f"scene {key!r} is null in the evaluation index")
        return entry

    def sample(self, key: str, num_views: int, generator: torch.Generator, step: int) -> tuple[Tensor, Tensor]:
        entry = self.lookup(key)
        context, target = entry
        if max(context + target) >= num_views:
            raise SceneRejected("index_frame_out_of_range", f"scene {key!r} has {num_views} frames but the "
                                f"index asks for frame {max(context + target)}")
        return torch.tensor(context), torch.tensor(target)


class ArbitrarySampler:
    """Random contexts/targets (with replacement) unless fixed lists are given."""

    def __init__(self, cfg: ViewSamplerArbitraryCfg):
        self.cfg = cfg

    def sample(self, key: str, num_views: int, generator: torch.Generator, step: int) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        context = torch.randint(num_views, (cfg.num_context_views,), generator=generator)
        target = torch.randint(num_views, (cfg.num_target_views,), generator=generator)
        if cfg.context_views is not None:
            context = torch.tensor(cfg.context_views)
        if cfg.target_views is not None:
            target = torch.tensor(cfg.target_views)
        if max(context.max(), target.max()) >= num_views:
            raise SceneRejected("view_sampler", f"scene {key!r} has {num_views} frames, fewer than the "
                                f"arbitrary sampler's views {context.tolist()} / {target.tolist()}")
        return context, target


class AllSampler:
    """Every frame is both a context and a target view."""

    def sample(self, key: str, num_views: int, generator: torch.Generator, step: int) -> tuple[Tensor, Tensor]:
        return torch.arange(num_views), torch.arange(num_views)


ViewSampler = BoundedSampler | EvaluationSampler | ArbitrarySampler | AllSampler


def get_view_sampler(cfg: ViewSamplerCfg, stage: Stage, overfit: bool, cameras_are_circular: bool) -> ViewSampler:
    if isinstance(cfg, ViewSamplerBoundedCfg):
        return BoundedSampler(cfg, stage, overfit, cameras_are_circular)
    if isinstance(cfg, ViewSamplerEvaluationCfg):
        return EvaluationSampler(cfg)
    if isinstance(cfg, ViewSamplerArbitraryCfg):
        return ArbitrarySampler(cfg)
    if isinstance(cfg, ViewSamplerAllCfg):
        return AllSampler()
    raise ConfigError("view_sampler", cfg, "one of bounded, evaluation, arbitrary, all")
