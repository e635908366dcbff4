"""Checkpoints: Lightning layout, top-k rotation, atomic writes, exact resume, fine-tune and load errors."""

import pathlib

import pytest
import torch
from loop_fixtures import SimulatedCrash, TinyModel, flat_parameters, tiny_cfg, train_tiny

from fabric_mvsplat import checkpoint as ckpt
from fabric_mvsplat.checkpoint import CheckpointError, load_file, rotate


def names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_file_layout_is_lightning_compatible_and_weights_only(tmp_path):
    train_tiny(tiny_cfg(**{"trainer.max_steps": 4, "checkpointing.every_n_train_steps": 4}), tmp_path)
    data = torch.load(tmp_path / "checkpoints" / "epoch_0-step_4.ckpt", weights_only=True)
    assert data["global_step"] == 4 and data["epoch"] == 0
    assert list(data["state_dict"]) and all(key.startswith("encoder.") for key in data["state_dict"])
    assert len(data["optimizer_states"]) == 1 and "state" in data["optimizer_states"][0]
    assert len(data["lr_schedulers"]) == 1 and data["lr_schedulers"][0]["last_epoch"] == 4
    assert data["train_stream"] == [{"position": 4}]
    assert len(data["rng_states"]) == 1 and set(data["rng_states"][0]) == {"torch", "cuda", "python", "numpy"}


def test_exactly_k_newest_checkpoints_remain_also_after_resume(tmp_path):
    cfg = tiny_cfg(**{"trainer.max_steps": 10, "checkpointing.every_n_train_steps": 2,
                      "checkpointing.save_top_k": 2})
    train_tiny(cfg, tmp_path)
    directory = tmp_path / "checkpoints"
    assert names(directory) == ["epoch_0-step_10.ckpt", "epoch_0-step_8.ckpt"]
    resumed = tiny_cfg(**{"trainer.max_steps": 14, "checkpointing.every_n_train_steps": 2,
                          "checkpointing.save_top_k": 2, "checkpointing.load": directory / "epoch_0-step_10.ckpt"})
    train_tiny(resumed, tmp_path)
    assert names(directory) == ["epoch_0-step_12.ckpt", "epoch_0-step_14.ckpt"]


def test_save_top_k_minus_one_keeps_all(tmp_path):
    train_tiny(tiny_cfg(**{"trainer.max_steps": 6, "checkpointing.every_n_train_steps": 2}), tmp_path)
    assert len(names(tmp_path / "checkpoints")) == 3


def test_rotation_orders_by_step_not_by_name(tmp_path):
    for step in (9, 10, 100, 11):
        (tmp_path / f"epoch_0-step_{step}.ckpt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("kept")
    (tmp_path / "other.ckpt").write_bytes(b"kept: not ours")
    kept = rotate(tmp_path, 2)
    assert [p.name for p in kept] == ["epoch_0-step_100.ckpt", "epoch_0-step_11.ckpt"]
    assert names(tmp_path) == ["epoch_0-step_100.ckpt", "epoch_0-step_11.ckpt", "notes.txt", "other.ckpt"]


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    keys = {"trainer.max_steps": 8, "checkpointing.every_n_train_steps": 4, "trainer.val_check_interval": 3}
    _, uninterrupted, *_ = train_tiny(tiny_cfg(**keys), tmp_path / "a")

    with pytest.raises(SimulatedCrash):  # the process dies during step 5, after the step-4 checkpoint
        train_tiny(tiny_cfg(**keys), tmp_path / "b", crash_at_step=5)
    assert names(tmp_path / "b" / "checkpoints") == ["epoch_0-step_4.ckpt"]

    resume = {**keys, "checkpointing.load": tmp_path / "b" / "checkpoints" / "epoch_0-step_4.ckpt"}
    _, resumed, state, stream, *_ = train_tiny(tiny_cfg(**resume), tmp_path / "b")
    assert resumed.seen_steps == [4, 5, 6, 7] and state["step"] == 8 and stream.position == 8
    assert torch.equal(flat_parameters(resumed), flat_parameters(uninterrupted))
    final_a = torch.load(tmp_path / "a" / "checkpoints" / "epoch_0-step_8.ckpt", weights_only=True)
    final_b = torch.load(tmp_path / "b" / "checkpoints" / "epoch_0-step_8.ckpt", weights_only=True)
    for key, value in final_a["optimizer_states"][0]["state"][0].items():
        assert torch.equal(value, final_b["optimizer_states"][0]["state"][0][key])
    assert final_a["lr_schedulers"] == final_b["lr_schedulers"]


def test_fine_tune_loads_weights_only_and_starts_fresh(tmp_path):
    train_tiny(tiny_cfg(**{"trainer.max_steps": 4, "checkpointing.every_n_train_steps": 4}), tmp_path / "a")
    source = tmp_path / "a" / "checkpoints" / "epoch_0-step_4.ckpt"
    weights = torch.load(source, weights_only=True)["state_dict"]
    cfg = tiny_cfg(**{"trainer.max_steps": 1, "checkpointing.load": source, "checkpointing.resume": False,
                      "trainer.val_check_interval": None, "trainer.gradient_clip_val": None,
                      "optimizer.cosine_lr": False, "optimizer.warm_up_steps": 1})
    _, model, state, stream, *_ = train_tiny(cfg, tmp_path / "b")
    assert model.seen_steps == [0] and stream.position == 1 and state["step"] == 1
    # One fresh Adam step (no moments loaded) moves each weight by at most lr from the loaded values.
    for key, value in model.state_dict().items():
        assert torch.allclose(value, weights[key], rtol=0, atol=1.001 * 2e-4)
        assert not torch.equal(value, weights[key])


def test_fine_tune_mismatch_lists_keys(tmp_path):
    path = tmp_path / "other.ckpt"
    weights = TinyModel().state_dict()
    weights["encoder.9.weight"] = torch.zeros(1)
    weights["encoder.0.weight"] = torch.zeros(4, 4)
    del weights["encoder.3.bias"]
    torch.save({"state_dict": weights}, path)
    cfg = tiny_cfg(**{"checkpointing.load": path, "checkpointing.resume": False})
    with pytest.raises(CheckpointError) as error:
        train_tiny(cfg, tmp_path)
    message = str(error.value)
    assert str(path) in message
    assert "missing (1): encoder.3.bias" in message and "unexpected (1): encoder.9.weight" in message
    assert "encoder.0.weight: file [4, 4] vs model [16, 8]" in message
    assert "\n" not in message  # one line, as every user error


def test_resume_from_weights_only_file_says_to_fine_tune(tmp_path):
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": TinyModel().state_dict()}, path)
    with pytest.raises(CheckpointError, match="checkpointing.resume=false"):
        train_tiny(tiny_cfg(**{"checkpointing.load": path}), tmp_path)


def test_crash_during_write_keeps_previous_checkpoints(tmp_path, monkeypatch):
    cfg = tiny_cfg(**{"trainer.max_steps": 6, "checkpointing.every_n_train_steps": 2, "checkpointing.save_top_k": 2})
    real_save = torch.save
    calls = []

    def dying_save(obj, file):
        calls.append(1)
        if len(calls) == 3:  # the step-6 checkpoint: half written, then the disk/process fails
            real_save(obj, file)
            file.truncate(file.tell() // 2)
            raise OSError("simulated crash while writing")
        real_save(obj, file)

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(OSError, match="simulated crash"):
        train_tiny(cfg, tmp_path)
    directory = tmp_path / "checkpoints"
    assert names(directory) == ["epoch_0-step_2.ckpt", "epoch_0-step_4.ckpt"]  # no partial file, no temp file
    for name in names(directory):
        assert load_file(directory / name)["global_step"] in (2, 4)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        load_file(tmp_path / "missing.ckpt")
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": TinyModel().state_dict()}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.ckpt is corrupt or truncated"):
        load_file(truncated)
    with pytest.raises(CheckpointError, match="truncated.ckpt is corrupt"):
        train_tiny(tiny_cfg(**{"checkpointing.load": truncated}), tmp_path)


def test_pickled_objects_need_the_explicit_opt_in(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": TinyModel().state_dict(), "hyper_parameters": {"dir": pathlib.PurePosixPath("x")}},
               path)
    with pytest.raises(CheckpointError) as error:
        load_file(path)
    assert "checkpointing.allow_unsafe_load=true" in str(error.value) and "PurePosixPath" in str(error.value)
    with pytest.warns(UserWarning, match="weights_only=False"):
        assert "state_dict" in load_file(path, allow_unsafe_load=True)


def test_final_checkpoint_at_max_steps_counts_in_top_k(tmp_path):
    train_tiny(tiny_cfg(**{"trainer.max_steps": 5, "checkpointing.every_n_train_steps": 2,
                           "checkpointing.save_top_k": 2}), tmp_path)
    assert names(tmp_path / "checkpoints") == ["epoch_0-step_4.ckpt", "epoch_0-step_5.ckpt"]
    assert load_file(tmp_path / "checkpoints" / "epoch_0-step_5.ckpt")["global_step"] == 5


def test_load_latest_starts_fresh_then_resumes_from_the_newest(tmp_path):
    keys = {"trainer.max_steps": 4, "checkpointing.every_n_train_steps": 2, "checkpointing.load": "latest"}
    _, model, state, *_ = train_tiny(tiny_cfg(**keys), tmp_path)  # nothing there yet: a fresh run
    assert model.seen_steps == [0, 1, 2, 3] and state["step"] == 4
    (tmp_path / "checkpoints" / "epoch_0-step_4.ckpt").rename(tmp_path / "checkpoints" / "epoch_0-step_3.ckpt")
    _, model, state, *_ = train_tiny(tiny_cfg(**{**keys, "trainer.max_steps": 6}), tmp_path)
    assert model.seen_steps == [4, 5] and state["step"] == 6  # the newest by step, whatever the name order


def one_cycle_lrs(max_steps: int, steps: int) -> list[float]:
    """The learning rates torch's OneCycleLR gives a run planned for max_steps from the start."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-4, total_steps=max_steps + 10,
                                                    pct_start=0.01, cycle_momentum=False, anneal_strategy="cos")
    from test_loop import lrs

    return lrs(scheduler, optimizer, steps)


def test_resume_with_a_longer_max_steps_finishes_on_the_rebuilt_schedule(tmp_path):
    from test_loop import read_events

    keys = {"trainer.max_steps": 6, "checkpointing.every_n_train_steps": 3, "trainer.val_check_interval": None}
    train_tiny(tiny_cfg(**keys), tmp_path)
    longer = {**keys, "trainer.max_steps": 40, "checkpointing.load": tmp_path / "checkpoints" / "epoch_0-step_6.ckpt"}
    _, model, state, *_ = train_tiny(tiny_cfg(**longer), tmp_path)  # OneCycleLR(16 steps) would raise at step 16
    assert state["step"] == 40 and model.seen_steps == list(range(6, 40))
    assert state["scheduler"].total_steps == 50 and state["scheduler"].last_epoch == 40
    logged = [e.value for e in read_events(tmp_path).Scalars("train/lr")]
    assert logged[6:] == pytest.approx(one_cycle_lrs(40, 40)[6:], rel=1e-6)


def test_resume_below_the_checkpoint_step_stops_before_any_work(tmp_path):
    from fabric_mvsplat.errors import ConfigError

    train_tiny(tiny_cfg(**{"trainer.max_steps": 4, "checkpointing.every_n_train_steps": 4}), tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    shorter = {"trainer.max_steps": 2, "checkpointing.load": tmp_path / "checkpoints" / "epoch_0-step_4.ckpt"}
    with pytest.raises(ConfigError, match=r"trainer.max_steps' = 2 .* >= 4"):
        train_tiny(tiny_cfg(**shorter), tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_tensorboard_has_one_value_per_step_after_a_resume(tmp_path):
    from test_loop import read_events

    keys = {"trainer.max_steps": 8, "checkpointing.every_n_train_steps": 4, "trainer.val_check_interval": 2}
    with pytest.raises(SimulatedCrash):  # steps 0-5 logged (as 1..6), the checkpoint holds step 4
        train_tiny(tiny_cfg(**keys), tmp_path, crash_at_step=6)
    train_tiny(tiny_cfg(**{**keys, "checkpointing.load": "latest"}), tmp_path)
    events = read_events(tmp_path)
    assert [e.step for e in events.Scalars("loss/total")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("val/mse")] == [2, 4, 6, 8]  # no sanity batch logged


def test_16_mixed_scaler_state_round_trips_and_a_skipped_step_keeps_the_schedule(tmp_path):
    """A GradScaler whose first scale overflows fp16 gradients: that update is skipped, so the schedule stays;
    its state is saved under Lightning's `MixedPrecision` key and restored on resume."""
    from lightning_fabric import Fabric
    from lightning_fabric.plugins.precision import MixedPrecision

    def fabric():
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, backoff_factor=2.0**-30)
        fabric = Fabric(accelerator="cpu", devices=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
        fabric.launch()
        return fabric

    keys = {"trainer.max_steps": 4, "checkpointing.every_n_train_steps": 4, "trainer.val_check_interval": None,
            "trainer.gradient_clip_val": 0.5}
    _, _, state, *_, summary = train_tiny(tiny_cfg(**keys), tmp_path, fabric=fabric())  # clipping must not raise
    assert summary.amp_skipped_steps == 1
    assert state["scheduler"].last_epoch == 3  # 4 optimizer steps, 3 updates
    from test_loop import read_events

    lrs = [e.value for e in read_events(tmp_path).Scalars("train/lr")]
    assert lrs[0] == lrs[1] and lrs[1:] == pytest.approx(one_cycle_lrs(4, 3), rel=1e-6)
    saved = torch.load(tmp_path / "checkpoints" / "epoch_0-step_4.ckpt", weights_only=True)
    assert saved["MixedPrecision"]["scale"] == 2.0**10 == state["scaler"].get_scale()

    resumed = tiny_cfg(**{**keys, "trainer.max_steps": 5, "checkpointing.load": "latest"})
    _, _, state, *_, summary = train_tiny(resumed, tmp_path, fabric=fabric())
    assert state["scaler"].get_scale() == 2.0**10  # restored, not the fresh scaler's 2**40
    assert summary.amp_skipped_steps == 0


def test_latest_in_test_mode_without_a_checkpoint_is_one_user_error(tmp_path):
    """Test mode has nothing to start fresh from: a CheckpointError (exit code 2 in train.main) naming the folder."""
    from fabric_mvsplat.output_folder import resolve_latest

    cfg = tiny_cfg(**{"mode": "test", "checkpointing.load": "latest"})
    with pytest.raises(CheckpointError, match=f"latest found no checkpoint in {tmp_path / 'checkpoints'}; point"):
        resolve_latest(cfg, tmp_path)
