"""A real 2-process torchrun (gloo, CPU) run of the loop on the real sharded train stream: identical
parameters, disjoint scenes, only rank 0 writes. Each rank reports through its own JSON file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from data_fixtures import make_split

TESTS = Path(__file__).resolve().parent


def test_torchrun_two_ranks(tmp_path):
    data_root = tmp_path / "data"
    keys = make_split(data_root / "train", num_scenes=24)  # one pass = 2 ranks x 6 steps x batch 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    results = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(TESTS / "loop_fixtures.py"), str(data_root), str(tmp_path / "run"), str(results)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    fields = {rank: json.loads((results / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    for rank in (0, 1):
        assert fields[rank]["rank"] == rank and fields[rank]["world"] == 2
        assert fields[rank]["strategy"] == "DDPStrategy"
        assert fields[rank]["step"] == 6 and fields[rank]["equal"]
    assert fields[0]["sha"] == fields[1]["sha"]  # parameters stay identical across ranks
    assert fields[0]["validations"] == 4 and fields[1]["validations"] == 0  # sanity + steps 2, 4, 6 on rank 0
    assert fields[1]["writes"] == [], fields[1]["writes"]  # rank 1 created no file and no directory
    # The data layer shards by rank: together the ranks see one full pass, each scene exactly once.
    scenes = [fields[rank]["scenes"] for rank in (0, 1)]
    assert len(scenes[0]) == len(scenes[1]) == 12
    assert sorted(scenes[0] + scenes[1]) == sorted(keys)

    run = tmp_path / "run"
    assert len(list((run / "tensorboard").glob("events.out.tfevents*"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0-step_6.ckpt"]
    checkpoint = torch.load(run / "checkpoints" / "epoch_0-step_6.ckpt", weights_only=True)
    assert [state["batches"] for state in checkpoint["train_stream"]] == [6, 6]
    assert [state["layout"]["rank"] for state in checkpoint["train_stream"]] == [0, 1]
    assert len(checkpoint["rng_states"]) == 2
    assert not torch.equal(checkpoint["rng_states"][0]["torch"], checkpoint["rng_states"][1]["torch"])  # seed + rank


def run_ranks(tmp_path: Path, nproc: int, *worker_args: str) -> dict:
    """loop_fixtures.ddp_worker on `nproc` torchrun ranks over 24 scenes -> {rank: its JSON report}."""
    data_root = tmp_path / "data"
    make_split(data_root / "train", num_scenes=24)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    results = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         str(TESTS / "loop_fixtures.py"), str(data_root), str(tmp_path / "run"), str(results), *worker_args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return {rank: json.loads((results / f"rank{rank}.json").read_text()) for rank in range(nproc)}


def test_fractional_val_check_interval_validates_at_the_documented_steps(tmp_path):
    """trainer.val_check_interval=0.7 over 24 scenes at batch 2 (docs/configuration.md): a pass is the steps
    one rank takes to read its share once, validation every int(0.7 x pass) steps counted from each pass's
    start. 1 rank: pass 12 steps, every 8 -> 8, 20. 2 ranks: pass 6, every 4 -> 4, 10 (not 4, 8, 12: the count
    restarts with each pass, as Lightning's batch index restarts with each epoch). Step 0 is the sanity batch."""
    one = run_ranks(tmp_path / "one", 1, "0.7", "20")
    assert one[0]["validation_steps"] == [0, 8, 20]
    two = run_ranks(tmp_path / "two", 2, "0.7", "12")
    assert two[0]["validation_steps"] == [0, 4, 10] and two[1]["validation_steps"] == []
    assert two[0]["step"] == two[1]["step"] == 12
