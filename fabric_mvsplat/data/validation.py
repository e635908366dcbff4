"""The loop's step-interval validation source: an endless, deterministic, resumable stream.

It replaces the original's ValidationWrapper (a length-1 map dataset around a persistent worker's iterator):
batches come from the `test` split with the `val`-stage view sampler, pass after pass (reshuffled per pass
when `dataset.shuffle_val`), so validation never exhausts and a 1-scene split yields at every interval.
It runs in the calling process: one batch per validation does not need a worker, and the bounded sampler
then reads the step tracker at exactly the step being validated.
"""

from typing import Iterator

from ..errors import DatasetError
from ..types import BatchedExample
from .chunks import list_scenes
from .config import DataLoaderStageCfg, DatasetCfg
from .step_tracker import StepTracker
from .stream import BatchSteps, Layout, SceneStream, fresh_state, mix_seed


class ValidationSource:
    def __init__(self, dataset_cfg: DatasetCfg, loader_cfg: DataLoaderStageCfg, step_tracker: StepTracker,
                 seed: int) -> None:
        self.dataset_cfg, self.loader_cfg, self.step_tracker = dataset_cfg, loader_cfg, step_tracker
        self.seed = mix_seed(seed, loader_cfg.seed)
        self.scenes = list_scenes(dataset_cfg, "val")
        if not self.scenes:
            raise DatasetError(f"the test index.json files under dataset.roots={dataset_cfg.roots} list no scenes to "
                               "validate on (or set trainer.val_check_interval=null)")
        self.state = fresh_state(0)
        self.iterator: Iterator | None = None

    def __iter__(self) -> "ValidationSource":
        return self

    def __next__(self) -> BatchedExample:
        if self.iterator is None:
            stream = SceneStream(self.dataset_cfg, "val", self.scenes, seed=self.seed,
                                 shuffle=self.dataset_cfg.shuffle_val, layout=Layout(self.loader_cfg.batch_size),
                                 state=self.state, steps=BatchSteps(self.step_tracker))
            self.iterator = iter(stream)
        batch, meta = next(self.iterator)
        self.state["batches"] += 1
        self.state["cursors"][0] = meta["cursor"]
        self.state["skips"][0] = meta["skips"]
        return batch

    def state_dict(self) -> dict:
        return {"batches": self.state["batches"], "start": self.state["start"],
                "cursors": list(self.state["cursors"]), "skips": [dict(s) for s in self.state["skips"]]}

    def load_state_dict(self, state: dict) -> None:
        self.state = {key: state[key] for key in ("batches", "start", "cursors", "skips")}
        self.iterator = None
