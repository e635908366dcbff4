"""Endless, sharded, exactly resumable scene streams (training and validation) and the finite test loader.

The stream is the endless sequence pass_0 ++ pass_1 ++ ...; pass p is every scene once, chunks shuffled and
scenes shuffled inside each chunk from (seed, p) (the original's order, which keeps reads chunk-local).
Position g of that sequence belongs to shard (g // block) % num_shards, num_shards = world_size x workers,
block = max(1, N // num_shards): within a pass every scene goes to exactly one rank/worker, and every shard
gets scenes even when there are fewer scenes than shards. Each scene's randomness (views, flip) comes from
a generator seeded with (seed, g), so the content of position g never depends on timing or on the layout.
"""

import hashlib
import signal
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DatasetError, UnusableDataError
from ..types import BatchedExample
from .chunks import CORRUPT_REASONS, ChunkCache, ExampleBuilder, SceneRef, list_scenes, warn_skip
from .config import DataLoaderStageCfg, DatasetCfg, ViewSamplerEvaluationCfg
from .scene_names import scene_file_name
from .step_tracker import StepTracker
from .view_sampler import EvaluationSampler, SceneRejected, Stage


def mix_seed(*values: int | str) -> int:
    """A stable 63-bit seed from several values (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def shard_position(shard: int, j: int, num_shards: int, block: int) -> int:
    """Position in the endless sequence of the j-th scene a shard sees (blocks go round-robin to shards)."""
    return (shard + (j // block) * num_shards) * block + j % block


def collate(examples: list[dict]) -> dict:
    """default_collate's result (tensors stacked on a new batch dim, strings listed), stacked in numpy:
    torch.stack of images on the OpenMP pool stalls on an oversubscribed CPU."""
    first = examples[0]
    if isinstance(first, dict):
        return {key: collate([example[key] for example in examples]) for key in first}
    if isinstance(first, torch.Tensor):
        return torch.from_numpy(np.stack([example.numpy() for example in examples]))
    return list(examples)


class PassOrder:
    """Scene indices in the order of pass p."""

    def __init__(self, scenes: list[SceneRef], seed: int, shuffle: bool) -> None:
        self.groups: list[list[int]] = []
        for i, scene in enumerate(scenes):
            if not self.groups or scenes[self.groups[-1][0]].chunk != scene.chunk:
                self.groups.append([])
            self.groups[-1].append(i)
        self.seed, self.shuffle, self.num_scenes = seed, shuffle, len(scenes)
        self.cache: dict[int, list[int]] = {}

    def __call__(self, p: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_scenes))
        if p not in self.cache:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, "pass", p))
            order = []
            for c in torch.randperm(len(self.groups), generator=generator).tolist():
                group = self.groups[c]
                order += [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
            self.cache = {p: order, **{q: o for q, o in self.cache.items() if q == p - 1}}
        return self.cache[p]


def no_usable_scene_error(reasons: Counter, examples: dict[str, str], num_scenes: int,
                          where: str) -> UnusableDataError:
    summary = ", ".join(f"{reason}: {count}x (e.g. {examples[reason]})" for reason, count in reasons.most_common())
    return UnusableDataError(f"none of the {num_scenes} scenes of {where} is usable; rejected by {summary}. "
                        "Fix the data or the dataset/view_sampler settings named above.")


@dataclass(frozen=True)
class Layout:
    """How a stream is cut: this rank of `world_size`, each rank's share split again over `num_workers` DataLoader
    workers (0: read in the calling process), `batch_size` scenes per batch."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0


@dataclass(frozen=True)
class BatchSteps:
    """The training step the view sampler sees for a batch: the tracker's live step when `offset` is None
    (validation, which runs in the calling process), else offset + (batch - phase) // batches_per_step (training:
    the step that batch is trained at, so prefetching workers neither lag behind the curriculum nor race it; phase
    is the batch from which batches_per_step applies, 0 unless a resume changed the accumulation)."""

    tracker: StepTracker
    offset: int | None = None
    batches_per_step: int = 1
    phase: int = 0

    def step_of(self, batch_index: int) -> int:
        if self.offset is None:
            return self.tracker.get_step()
        return self.offset + (batch_index - self.phase) // self.batches_per_step


class SceneStream(IterableDataset):
    """One rank's endless batch stream; in a DataLoader each worker plays one logical worker.

    Yields (batch, meta); meta tells the owner which logical worker produced batch `batch` and where that
    worker's cursor now stands, so the owner can save an exact position (`state`, which the owner keeps).
    """

    def __init__(self, dataset_cfg: DatasetCfg, stage: Stage, scenes: list[SceneRef], *, seed: int, shuffle: bool,
                 layout: Layout, state: dict, steps: BatchSteps) -> None:
        self.cfg, self.stage, self.scenes, self.seed, self.shuffle = dataset_cfg, stage, scenes, seed, shuffle
        self.layout, self.state, self.steps = layout, state, steps

    def __iter__(self) -> Iterator[tuple[BatchedExample, dict]]:
        info = get_worker_info()
        workers, first_batch = max(1, self.layout.num_workers), self.state["batches"]
        # DataLoader asks its workers round-robin from worker 0; rotating the roles makes the batch that is
        # due next after a restore come first.
        worker = ((info.id if info else 0) + first_batch) % workers
        num_shards, shard = self.layout.world_size * workers, self.layout.rank * workers + worker
        num_scenes = len(self.scenes)
        block = max(1, num_scenes // num_shards)
        builder, cache = ExampleBuilder(self.cfg, self.stage), ChunkCache()
        order = PassOrder(self.scenes, self.seed, self.shuffle)
        cursor, skips = self.state["cursors"][worker], Counter(self.state["skips"][worker])
        batch_index = first_batch + (worker - first_batch) % workers
        rejected: set[int] = set()
        reasons, reason_examples = Counter(), {}
        while True:
            examples, positions = [], []
            while len(examples) < self.layout.batch_size:
                position = self.state["start"] + shard_position(shard, cursor, num_shards, block)
                cursor += 1
                pass_index, i = divmod(position, num_scenes)
                scene_index = order(pass_index)[i]
                ref = self.scenes[scene_index]
                step = self.steps.step_of(batch_index)
                generator = torch.Generator().manual_seed(mix_seed(self.seed, "scene", position))
                try:
                    examples.append(builder.build(cache.scene(ref), ref.chunk, generator, step))
                except SceneRejected as error:
                    skips[error.reason] += 1
                    warn_skip(error)
                    rejected.add(scene_index)
                    reasons[error.reason] += 1
                    reason_examples.setdefault(error.reason, str(error))
                    if len(rejected) == num_scenes:
                        raise no_usable_scene_error(reasons, reason_examples, num_scenes,
                                                    f"{self.stage} data in {self.cfg.roots}") from None
                    continue
                rejected.clear()
                reasons.clear()
                positions.append(position)
            meta = {"worker": worker, "batch": batch_index, "cursor": cursor, "skips": dict(skips),
                    "positions": positions}
            yield collate(examples), meta
            batch_index += workers


def fresh_state(num_workers: int) -> dict:
    workers = max(1, num_workers)
    return {"batches": 0, "start": 0, "cursors": [0] * workers, "skips": [{} for _ in range(workers)]}


def _record(state: dict, meta: dict) -> None:
    if meta["batch"] != state["batches"]:
        raise RuntimeError(f"data stream out of order: got batch {meta['batch']}, expected {state['batches']}")
    state["batches"] += 1
    state["cursors"][meta["worker"]] = meta["cursor"]
    state["skips"][meta["worker"]] = meta["skips"]


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM, SIGINT and SIGUSR1, which SLURM and Ctrl-C send to the whole process
    group (torch's workers would die of SIGTERM): the training loop in the main process finishes its step and
    saves a checkpoint, and the workers stop when it shuts them down or exits (they watch their parent).
    SIGUSR1 is POSIX-only: where the platform lacks it (Windows), there is nothing to ignore."""
    for name in ("SIGTERM", "SIGINT", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def iterate(dataset: IterableDataset, num_workers: int, **loader_kwargs) -> Iterator:
    """`dataset`'s items, in this process (0 workers) or from DataLoader worker processes that end with the
    iteration: when it finishes, raises, or is closed or released by the caller."""
    if num_workers == 0:
        yield from dataset
        return
    batches = iter(DataLoader(dataset, batch_size=None, num_workers=num_workers,
                              worker_init_fn=leave_stop_signals_to_the_main_process, **loader_kwargs))
    try:
        yield from batches
    finally:
        # torch stops the workers in the iterator's __del__. When a worker raised, the exception's traceback
        # keeps the iterator alive, and the shutdown that finally runs waits 5 s per worker before killing it
        # (measured 10 s for 2 workers). Run the same shutdown now, while the workers still answer. It is
        # torch's private method (tests/test_data_stream.py checks it is there); without it __del__ still runs.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class TrainStream:
    """Endless training batches for one rank: sharded over ranks x workers, reshuffled every pass, resumable."""

    def __init__(self, dataset_cfg: DatasetCfg, loader_cfg: DataLoaderStageCfg, step_tracker: StepTracker,
                 rank: int, world_size: int, seed: int, batches_per_step: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset_cfg, self.loader_cfg, self.step_tracker = dataset_cfg, loader_cfg, step_tracker
        self.rank, self.world_size = rank, world_size
        self.seed = mix_seed(seed, loader_cfg.seed)
        self.scenes = list_scenes(dataset_cfg, "train")
        if not self.scenes:
            raise DatasetError(f"the train index.json files under dataset.roots={dataset_cfg.roots} list no scenes")
        self.state = fresh_state(loader_cfg.num_workers)
        # The sampler's step for batch k is step_offset + (k - phase) // batches_per_step: the step that batch is
        # trained at (the loop takes trainer.accumulate_grad_batches batches per step; phase is the batch from which
        # the current count applies, 0 unless a resume changed it). Prefetching workers then
        # neither lag behind the curriculum nor race it.
        self.batches_per_step = batches_per_step
        self.step_offset: int | None = None
        self.last_positions: list[int] = []  # stream positions of the last batch (pass = position // N)

    @property
    def num_scenes(self) -> int:
        return len(self.scenes)

    @property
    def epoch(self) -> int:
        """The pass over the training scenes that the last batch came from (0 before any batch)."""
        return max(self.last_positions, default=0) // max(1, self.num_scenes)

    @property
    def skip_counts(self) -> dict[str, int]:
        """Scenes skipped on this rank (all workers), by the filter or fault that rejected them."""
        return dict(sum((Counter(skips) for skips in self.state["skips"]), Counter()))

    @property
    def skipped_scenes(self) -> int:
        """Corrupt scenes skipped on this rank (all workers): the `data/skipped_scenes` scalar."""
        return sum(count for reason, count in self.skip_counts.items() if reason in CORRUPT_REASONS)

    def __iter__(self) -> Iterator[BatchedExample]:
        if self.step_offset is None:
            self.step_offset = (self.step_tracker.get_step()
                                - (self.state["batches"] - self.state.get("phase", 0)) // self.batches_per_step)
        num_workers = self.loader_cfg.num_workers
        layout = Layout(self.loader_cfg.batch_size, self.rank, self.world_size, num_workers)
        dataset = SceneStream(self.dataset_cfg, "train", self.scenes, seed=self.seed, shuffle=True, layout=layout,
                              state=self.state,
                              steps=BatchSteps(self.step_tracker, self.step_offset, self.batches_per_step,
                                               self.state.get("phase", 0)))
        for batch, meta in iterate(dataset, num_workers, prefetch_factor=2):
            _record(self.state, meta)
            self.last_positions = meta["positions"]
            yield batch

    def state_dict(self) -> dict:
        return {"format": 1, "layout": self._layout(), "step_offset": self.step_offset,
                "batches_per_step": self.batches_per_step, "phase": self.state.get("phase", 0),
                "batches": self.state["batches"], "start": self.state["start"],
                "cursors": list(self.state["cursors"]), "skips": [dict(s) for s in self.state["skips"]]}

    def load_state_dict(self, state: dict) -> None:
        saved_batches_per_step = state.get("batches_per_step", self.batches_per_step)
        phase = state.get("phase", 0)
        # The step the next batch trains at: the checkpoint's step (None: the stream had not started).
        next_step = (None if state["step_offset"] is None
                     else state["step_offset"] + (state["batches"] - phase) // saved_batches_per_step)
        if state["layout"] == self._layout():
            self.state = {key: state[key] for key in ("batches", "start", "cursors", "skips")}
            self.state["phase"], self.step_offset = phase, state["step_offset"]
            if saved_batches_per_step != self.batches_per_step and next_step is not None:
                # trainer.accumulate_grad_batches changed: from the next batch on, every batches_per_step
                # batches make one step, starting at the checkpoint's step.
                self.state["phase"], self.step_offset = state["batches"], next_step
            return
        # Another rank/worker layout or dataset: exact continuation is impossible; start the next pass.
        old = state["layout"]
        old_shards = old["world_size"] * max(1, old["num_workers"])
        block = max(1, old["num_scenes"] // old_shards)
        reached = max(state["start"] + shard_position(old["rank"] * max(1, old["num_workers"]) + w, cursor,
                                                      old_shards, block)
                      for w, cursor in enumerate(state["cursors"]))
        next_pass = reached // max(1, old["num_scenes"]) + 1
        warnings.warn(f"train data layout changed ({old} -> {self._layout()}); the stream restarts at pass "
                      f"{next_pass} instead of continuing exactly", RuntimeWarning)
        self.state = fresh_state(self.loader_cfg.num_workers)
        self.state["start"] = next_pass * len(self.scenes)
        self.state["skips"][0] = dict(sum((Counter(s) for s in state["skips"]), Counter()))
        self.step_offset = next_step

    def _layout(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "num_workers": self.loader_cfg.num_workers,
                "batch_size": self.loader_cfg.batch_size, "num_scenes": len(self.scenes), "seed": self.seed}


class TestScenes(IterableDataset):
    """A finite list of (scene, name) elements, split into contiguous runs over DataLoader workers. Each example
    also carries `file_name`: its name as one safe path component (data.scene_names), for the files test mode
    writes."""

    def __init__(self, dataset_cfg: DatasetCfg, elements: list[tuple[int, SceneRef, str]], batch_size: int,
                 seed: int) -> None:
        self.cfg, self.elements, self.batch_size, self.seed = dataset_cfg, elements, batch_size, seed

    def __iter__(self) -> Iterator[tuple[BatchedExample, dict]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        share = self.elements[worker * len(self.elements) // workers: (worker + 1) * len(self.elements) // workers]
        builder, cache, skips = ExampleBuilder(self.cfg, "test"), ChunkCache(), Counter()
        examples = []
        for position, ref, name in share:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, "test", position))
            try:
                example = builder.build(cache.scene(ref), ref.chunk, generator, 0, name=name)
                # Test mode names its files after the scene: a key from the dataset becomes a safe name here.
                examples.append({**example, "file_name": scene_file_name(example["scene"])})
            except SceneRejected as error:
                skips[error.reason] += 1
                warn_skip(error)
            if len(examples) == self.batch_size:
                yield collate(examples), {"worker": worker, "skips": dict(skips)}
                examples = []
        # The final meta carries the worker's skip count even when its last scenes were rejected.
        yield (collate(examples) if examples else None), {"worker": worker, "skips": dict(skips)}


class TestLoader:
    """Finite, deterministic test batches of this rank's share (contiguous) of the test scenes.

    Run r of a scene under dataset.test_times_per_scene = T > 1 is named `<key>_<r:02d>` (the original's
    DTU protocol); with the evaluation sampler that name is the index key. Scenes the evaluation index
    lacks or holds as null are dropped before `test_len` and the rank split (no chunk is read for that), so
    `test_len` counts usable scenes as in the original, where it capped the batches that came out, and
    every rank gets an even share of real work. They are counted in `index_skip_counts` (the same on every
    rank); what is rejected later (corrupt data, filters) is counted per rank in `skip_counts`.
    """

    def __init__(self, dataset_cfg: DatasetCfg, loader_cfg: DataLoaderStageCfg, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset_cfg, self.loader_cfg = dataset_cfg, loader_cfg
        times = dataset_cfg.test_times_per_scene
        elements = [(ref, f"{ref.key}_{k:02d}" if times > 1 else ref.key)
                    for ref in list_scenes(dataset_cfg, "test") for k in range(times)]
        self.index_skip_counts: dict[str, int] = {}
        if isinstance(dataset_cfg.view_sampler, ViewSamplerEvaluationCfg):
            sampler, usable, skips = EvaluationSampler(dataset_cfg.view_sampler), [], Counter()
            for ref, name in elements:
                try:
                    sampler.lookup(name)
                    usable.append((ref, name))
                except SceneRejected as error:
                    skips[error.reason] += 1
            elements, self.index_skip_counts = usable, dict(skips)
        if dataset_cfg.test_len > 0:
            elements = elements[: dataset_cfg.test_len]
        begin, end = rank * len(elements) // world_size, (rank + 1) * len(elements) // world_size
        self.elements = [(position, ref, name) for position, (ref, name) in enumerate(elements)][begin:end]
        self.skips: dict[int, dict[str, int]] = {}

    def __len__(self) -> int:
        """Scenes assigned to this rank (batches when batch_size is 1, before rejected scenes)."""
        return len(self.elements)

    @property
    def skip_counts(self) -> dict[str, int]:
        """Scenes of this rank's share rejected while loading (corrupt data, filters), by reason."""
        return dict(sum((Counter(s) for s in self.skips.values()), Counter()))

    @property
    def skipped_scenes(self) -> int:
        return sum(self.skip_counts.values())

    def __iter__(self) -> Iterator[BatchedExample]:
        self.skips = {}
        dataset = TestScenes(self.dataset_cfg, self.elements, self.loader_cfg.batch_size, self.loader_cfg.seed)
        num_workers = min(self.loader_cfg.num_workers, len(self.elements))
        for batch, meta in iterate(dataset, num_workers):
            self.skips[meta["worker"]] = meta["skips"]
            if batch is not None:
                yield batch

