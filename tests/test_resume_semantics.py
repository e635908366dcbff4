"""What a resume means: `latest` and rotation follow the run's own history when a resume branches off an earlier
step; a resume that changes accumulation, batch size or ranks says what one step now means, and the view sampler
keeps its step; validation after a resume renders and logs what an uninterrupted run does."""

import json
import os
import signal
import sys

import pytest
import torch
from conftest import read_events
from loop_fixtures import RecordingTracker, TinyModel, TinyTrainStream, ValidationStream, tiny_cfg, train_tiny
from test_preemption import ENV, finish, start, tiny_command, wait_for_line

from fabric_mvsplat.build import make_fabric, prepare_training, step_meaning_change
from fabric_mvsplat.checkpoint import LATEST_RECORD, latest_checkpoint, list_checkpoints, load_file
from fabric_mvsplat.loop import EXIT_STOPPED_BY_SIGNAL, fit

KEYS = {"trainer.max_steps": 12, "checkpointing.every_n_train_steps": 4, "checkpointing.save_top_k": 2,
        "trainer.val_check_interval": None}


def steps(directory) -> list[int]:
    return [step for step, _ in list_checkpoints(directory)]


def test_a_resume_from_an_earlier_step_keeps_its_own_history(tmp_path):
    """The folder holds steps 8 and 12 of a run; a resume from step 8 is stopped by SIGTERM near step 10: the
    printed `load=latest` resumes that checkpoint, not the other history's step 12, and rotation deletes neither
    the resume's start nor its successors."""
    train_tiny(tiny_cfg(**KEYS), tmp_path)
    checkpoints = tmp_path / "checkpoints"
    assert steps(checkpoints) == [8, 12]
    branch = {**KEYS, "trainer.max_steps": 40, "checkpointing.every_n_train_steps": 100,
              "checkpointing.load": str(checkpoints / "epoch_0-step_8.ckpt")}
    process = start([sys.executable, *tiny_command(tmp_path, branch, 0.4)])
    lines = wait_for_line(process, r"^step 9/\d+: loss")
    os.kill(process.pid, signal.SIGTERM)
    output = finish(process, lines)
    assert process.returncode == EXIT_STOPPED_BY_SIGNAL, output[-3000:]
    assert ("resuming from epoch_0-step_8.ckpt, while " in output and "later checkpoints of another run history "
            "(epoch_0-step_12.ckpt)" in output)
    stopped = [s for s in steps(checkpoints) if s not in (8, 12)]
    assert len(stopped) == 1 and 9 <= stopped[0] < 12, output[-3000:]  # top-2 of this history: 8 and the stop
    assert steps(checkpoints) == sorted([8, stopped[0], 12])  # the other history's step 12 is kept, untouched
    stopped_path = checkpoints / f"epoch_0-step_{stopped[0]}.ckpt"
    assert latest_checkpoint(checkpoints) == stopped_path  # what the printed `checkpointing.load=latest` resumes
    assert load_file(stopped_path)["lineage"] == ["epoch_0-step_4.ckpt", "epoch_0-step_8.ckpt"]

    # Resume it as printed, past the other history's step 12: that file now holds this history's step 12.
    _, model, state, *_ = train_tiny(tiny_cfg(**{**KEYS, "trainer.max_steps": 16, "checkpointing.load": "latest"}),
                                     tmp_path)
    assert model.seen_steps[0] == stopped[0] and state["step"] == 16
    assert steps(checkpoints) == [12, 16]  # top-2 within this history (the start was pushed out by its own)
    twelve = load_file(checkpoints / "epoch_0-step_12.ckpt")
    assert stopped_path.name in twelve["lineage"]  # written by this history, after the stop
    assert json.loads((tmp_path / LATEST_RECORD).read_text())["other_histories"] == []


def test_latest_without_a_record_is_the_highest_step(tmp_path):
    """A folder from before the record existed: `latest` is the checkpoint with the highest step, as it was."""
    (tmp_path / "checkpoints").mkdir()
    for step in (9, 10, 100):
        (tmp_path / "checkpoints" / f"epoch_0-step_{step}.ckpt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path / "checkpoints").name == "epoch_0-step_100.ckpt"


def test_validation_after_a_resume_equals_an_uninterrupted_runs(tmp_path):
    """Every validation renders the next scene of the validation stream; the resumed run's sanity check must not
    shift which scene each later validation renders."""
    keys = {"trainer.max_steps": 8, "trainer.val_check_interval": 2, "checkpointing.every_n_train_steps": 4,
            "trainer.num_sanity_val_steps": 1, "optimizer.cosine_lr": False}  # the schedule ignores max_steps

    def train(cfg, output_dir):
        fabric = make_fabric(cfg.trainer)
        fabric.seed_everything(cfg.seed)
        state = prepare_training(fabric, cfg, TinyModel(), TinyTrainStream(), ValidationStream(), RecordingTracker())
        fit(fabric, cfg, state, output_dir)
        return state

    train(tiny_cfg(**keys), tmp_path / "uninterrupted")
    train(tiny_cfg(**{**keys, "trainer.max_steps": 4}), tmp_path / "resumed")
    resumed = train(tiny_cfg(**{**keys, "checkpointing.load": tmp_path / "resumed" / "checkpoints" /
                                "epoch_0-step_4.ckpt"}), tmp_path / "resumed")
    assert resumed["val_source"].served == 1 + 4  # the sanity check's batch was given back, 4 validations taken

    def validation(run):
        return {event.step: event.value for event in read_events(tmp_path / run / "tensorboard").Scalars("val/mse")}

    expected = validation("uninterrupted")
    assert sorted(expected) == [2, 4, 6, 8]
    assert validation("resumed") == expected  # the same scenes, the same weights: equal scalars


@pytest.mark.parametrize("before, after", [(1, 2), (2, 1), (2, 3)])
def test_a_changed_accumulation_keeps_the_view_samplers_step(tmp_path, before, after, monkeypatch):
    """The step the view sampler sees for each batch after a resume that changes trainer.accumulate_grad_batches
    (3 steps done, so the batches before do not divide evenly by the new count)."""
    from data_fixtures import dataset_cfg, make_split

    from fabric_mvsplat.data import StepTracker, TrainStream
    from fabric_mvsplat.data.chunks import ExampleBuilder
    from fabric_mvsplat.data.config import DataLoaderStageCfg

    make_split(tmp_path / "train", 6)
    sampled_at = []
    real_build = ExampleBuilder.build
    monkeypatch.setattr(ExampleBuilder, "build", lambda self, scene, chunk, generator, step, name=None: (
        sampled_at.append(step), real_build(self, scene, chunk, generator, step, name))[1])

    def stream(batches_per_step):
        tracker = StepTracker()
        return tracker, TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(), tracker, 0, 1, 0,
                                          batches_per_step)

    tracker, first = stream(before)
    batches = iter(first)
    for _ in range(3 * before):  # steps 0, 1, 2
        next(batches)
    tracker, resumed = stream(after)
    resumed.load_state_dict(first.state_dict())
    tracker.set_step(3)
    sampled_at.clear()
    batches = iter(resumed)
    for _ in range(2 * after):  # steps 3 and 4
        next(batches)
    assert sampled_at == [3] * after + [4] * after


def test_a_resume_that_changes_what_a_step_means_says_so(tmp_path, capsys):
    train_tiny(tiny_cfg(**{"trainer.max_steps": 2, "checkpointing.every_n_train_steps": 2}), tmp_path)
    capsys.readouterr()
    checkpoint = tmp_path / "checkpoints" / "epoch_0-step_2.ckpt"
    assert load_file(checkpoint)["scenes_per_step"] == {"world_size": 1, "batch_size": 2, "accumulate_grad_batches": 1}
    train_tiny(tiny_cfg(**{"trainer.max_steps": 3, "checkpointing.load": checkpoint,
                           "trainer.accumulate_grad_batches": 2}), tmp_path)
    assert ("resuming with trainer.accumulate_grad_batches 1 -> 2: one step now trains on 4 scenes instead of 2"
            in capsys.readouterr().out)
    same = {"world_size": 1, "batch_size": 2, "accumulate_grad_batches": 1}
    assert step_meaning_change(same, same) is None and step_meaning_change(None, same) is None
    assert step_meaning_change(same, {**same, "world_size": 4, "batch_size": 7}).startswith(
        "resuming with ranks 1 -> 4, data_loader.train.batch_size 2 -> 7: one step now trains on 28 scenes instead of 2")
