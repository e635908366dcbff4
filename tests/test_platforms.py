"""Platforms without POSIX-only features (Windows: no SIGUSR1, no `resource` module): training and the data workers
start and run all the same."""

import signal
import sys
from itertools import islice

from fabric_mvsplat.data import StepTracker, TrainStream
from fabric_mvsplat.data.config import DataLoaderStageCfg
from data_fixtures import dataset_cfg, make_split
from loop_fixtures import tiny_cfg, train_tiny


def without_posix_extras(monkeypatch) -> None:
    """As on Windows: the signal module has no SIGUSR1 and `import resource` fails."""
    monkeypatch.delattr(signal, "SIGUSR1")
    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` raises ImportError


def test_training_loop_runs_without_sigusr1_or_resource(tmp_path, monkeypatch):
    without_posix_extras(monkeypatch)
    handlers_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    cfg = tiny_cfg(**{"trainer.max_steps": 4, "checkpointing.every_n_train_steps": 2})
    *_, state, _, _, summary = train_tiny(cfg, tmp_path / "run")
    assert state["step"] == 4 and summary.stopped_by is None
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))  # saved as usual
    # The handlers it could install (SIGTERM, SIGINT) were installed and put back.
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers_before


def test_data_workers_start_without_sigusr1(tmp_path, monkeypatch):
    """Each DataLoader worker ignores the stop signals the platform has (forked workers see the patched module)."""
    without_posix_extras(monkeypatch)
    make_split(tmp_path / "train", 4, scenes_per_chunk=2)
    stream = TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(num_workers=2, batch_size=1),
                               StepTracker(), 0, 1, 0)
    batches = list(islice(stream, 4))
    assert len(batches) == 4 and all(batch["scene"] for batch in batches)
