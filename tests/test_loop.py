"""The explicit loop: step semantics, validation cadence, logging, schedules and debugging aids."""

from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from loop_fixtures import TinyModel, flat_parameters, tiny_cfg, train_tiny

from fabric_mvsplat.config import OptimizerCfg
from fabric_mvsplat.build import make_scheduler


def read_events(output_dir: Path):
    """All event files of a run folder, as TensorBoard reads them (purges after a resume included)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list((output_dir / "tensorboard").glob("events.out.tfevents*"))
    events = EventAccumulator(str(output_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_step_semantics_and_validation_at_every_interval(tmp_path):
    cfg = tiny_cfg(**{"trainer.max_steps": 10, "trainer.val_check_interval": 2,
                      "checkpointing.every_n_train_steps": 100})
    _, model, state, stream, val_source, _ = train_tiny(cfg, tmp_path)
    assert state["step"] == 10
    assert model.seen_steps == list(range(10))  # 0-based, as Lightning's global_step
    # 1 sanity batch, then every 2 steps: a 1-scene validation split never runs dry.
    assert model.validation_steps == [0, 2, 4, 6, 8, 10]
    assert val_source.served == 6
    assert model.training  # back in train mode after validation
    assert stream.position == 10


def test_tensorboard_scalars_images_and_videos(tmp_path):
    cfg = tiny_cfg(**{"trainer.max_steps": 4, "trainer.val_check_interval": 2, "train.print_log_every_n_steps": 2,
                      "trainer.gradient_clip_val": 0.01})
    train_tiny(cfg, tmp_path)
    events = read_events(tmp_path)
    tags = events.Tags()
    for tag in ("loss/total", "loss/mse", "info/near", "info/global_step", "train/lr",
                "train/scenes_per_second", "data/skipped_scenes", "val/mse", "train/grad_norm", "train/grad_clipped",
                "time/data_wait_seconds", "time/compute_seconds", "memory/peak_rss_gib"):
        assert tag in tags["scalars"], tag
    # One convention: every scalar at the number of optimizer steps done when it was measured.
    assert [e.step for e in events.Scalars("loss/total")] == [2, 4]
    assert [e.value for e in events.Scalars("info/global_step")] == [2, 4]
    assert [e.step for e in events.Scalars("val/mse")] == [2, 4]  # the sanity batch at 0 is not logged
    assert all(e.value > 0 for e in events.Scalars("train/scenes_per_second"))
    assert all(e.value > 0.01 for e in events.Scalars("train/grad_norm"))  # before clipping
    assert [e.value for e in events.Scalars("train/grad_clipped")] == [1.0, 1.0]
    assert all(e.value > 0 for e in events.Scalars("time/compute_seconds"))
    assert all(e.value >= 0 for e in events.Scalars("time/data_wait_seconds"))
    assert all(0.01 < e.value < 64 for e in events.Scalars("memory/peak_rss_gib"))
    assert "comparison" in tags["images"] and "video/rgb" in tags["images"]  # tensorboardX videos are GIFs


def test_sanity_validation_is_one_batch_and_not_logged(tmp_path):
    """As the original: num_sanity_val_steps=2 runs its one-batch validation loader once; nothing is logged."""
    cfg = tiny_cfg(**{"trainer.max_steps": 3, "trainer.val_check_interval": 3, "trainer.num_sanity_val_steps": 2})
    _, model, _, _, val_source, _ = train_tiny(cfg, tmp_path)
    assert model.validation_steps == [0, 3] and val_source.served == 2
    assert [e.step for e in read_events(tmp_path).Scalars("val/mse")] == [3]


def test_fractional_interval_counts_from_the_start_of_each_pass():
    from fabric_mvsplat.loop import ValidationSchedule

    # 20 scenes, batch 2, one rank: a pass is 10 steps; 0.5 -> every 5; 0.35 -> every 3 within each pass.
    half = ValidationSchedule.from_config(tiny_cfg(**{"trainer.val_check_interval": 0.5}), 20, 1)
    assert [s for s in range(1, 21) if half(s)] == [5, 10, 15, 20]
    odd = ValidationSchedule.from_config(tiny_cfg(**{"trainer.val_check_interval": 0.35}), 20, 1)
    assert [s for s in range(1, 21) if odd(s)] == [3, 6, 9, 13, 16, 19]
    # Two ranks read half the scenes each per pass; accumulation makes a step read more scenes.
    two = ValidationSchedule.from_config(tiny_cfg(**{"trainer.val_check_interval": 1.0}), 20, 2)
    assert [s for s in range(1, 21) if two(s)] == [5, 10, 15, 20]
    accumulated = ValidationSchedule.from_config(
        tiny_cfg(**{"trainer.val_check_interval": 1.0, "trainer.accumulate_grad_batches": 2}), 20, 1)
    assert [s for s in range(1, 21) if accumulated(s)] == [5, 10, 15, 20]
    assert ValidationSchedule.from_config(tiny_cfg(**{"trainer.val_check_interval": None}), 20, 1) is None


def test_no_validation_when_interval_is_null(tmp_path):
    cfg = tiny_cfg(**{"trainer.max_steps": 3, "trainer.val_check_interval": None})
    _, model, *_ = train_tiny(cfg, tmp_path)
    assert model.validation_steps == []


def test_validation_does_not_change_training(tmp_path):
    """Validation consumes RNG (and the tiny model uses dropout): training must not notice."""
    with_val = tiny_cfg(**{"trainer.max_steps": 6, "trainer.val_check_interval": 1, "trainer.num_sanity_val_steps": 2})
    without = tiny_cfg(**{"trainer.max_steps": 6, "trainer.val_check_interval": None})
    _, a, *_ = train_tiny(with_val, tmp_path / "a")
    _, b, *_ = train_tiny(without, tmp_path / "b")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_gradient_clipping_bounds_the_gradients_the_optimizer_sees(tmp_path):
    norms = []  # total gradient norm at each optimizer step, read by torch's own step hook

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        train_tiny(tiny_cfg(**{"trainer.max_steps": 3, "trainer.gradient_clip_val": None}), tmp_path / "free")
        free = norms.copy()
        bound = min(free) / 4  # well below every unclipped norm, so clipping has to act at each step
        norms.clear()
        train_tiny(tiny_cfg(**{"trainer.max_steps": 3, "trainer.gradient_clip_val": bound}), tmp_path / "clipped")
    finally:
        handle.remove()
    assert len(free) == 3 and min(free) > 0
    assert len(norms) == 3 and all(norm <= bound * (1 + 1e-4) for norm in norms), (norms, bound)
    assert all(norm >= bound * 0.99 for norm in norms)  # scaled down to the bound, not zeroed


def test_logged_grad_norm_is_the_norm_before_clipping(tmp_path, monkeypatch):
    """The gradients Adam receives have a global norm <= gradient_clip_val; the logged norm is before clipping."""
    applied = []
    original = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        applied.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    train_tiny(tiny_cfg(**{"trainer.max_steps": 3, "trainer.gradient_clip_val": 0.05}), tmp_path / "a")
    logged = [e.value for e in read_events(tmp_path / "a").Scalars("train/grad_norm")]
    assert all(norm > 0.05 for norm in logged)  # so clipping had work to do
    assert applied == pytest.approx([0.05] * 3, rel=1e-4)
    applied.clear()
    train_tiny(tiny_cfg(**{"trainer.max_steps": 3, "trainer.gradient_clip_val": None}), tmp_path / "b")
    logged = [e.value for e in read_events(tmp_path / "b").Scalars("train/grad_norm")]
    assert applied == pytest.approx(logged, rel=1e-5) and max(applied) > 0.05  # untouched without clipping


def lrs(scheduler, optimizer, steps):
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_one_cycle_schedule_as_the_original():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    max_steps = 300_001
    scheduler = make_scheduler(OptimizerCfg(lr=2e-4, cosine_lr=True), max_steps, optimizer)
    assert scheduler.total_steps == max_steps + 10
    values = lrs(scheduler, optimizer, 3002)
    assert values[0] == pytest.approx(8e-6)  # max_lr / 25
    assert max(values) == pytest.approx(2e-4) and abs(values.index(max(values)) - 3000) <= 1
    assert values[1500] < values[2500] < values[3000]


def test_linear_warm_up_schedule_as_pixelsplat():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.5e-4)
    scheduler = make_scheduler(OptimizerCfg(lr=1.5e-4, warm_up_steps=2000, cosine_lr=False), -1, optimizer)
    values = lrs(scheduler, optimizer, 2100)
    assert values[0] == pytest.approx(1.5e-4 / 2000)
    assert values[1000] == pytest.approx(1.5e-4 * (1 / 2000 + (1 - 1 / 2000) * 1000 / 2000))
    assert values[2000] == pytest.approx(1.5e-4) and values[2099] == pytest.approx(1.5e-4)


def test_non_finite_loss_stops_with_step_and_scenes(tmp_path):
    cfg = tiny_cfg(**{"trainer.max_steps": 6, "checkpointing.every_n_train_steps": 100})
    with pytest.raises(RuntimeError) as error:
        train_tiny(cfg, tmp_path, nan_at_step=3)
    message = str(error.value)
    assert "global step 3" in message and "scene_r0_6" in message and "scene_r0_7" in message
    assert "replay command" in message and "optimizer.lr" in message


def test_detect_anomaly_is_on_only_when_asked(tmp_path):
    _, model, *_ = train_tiny(tiny_cfg(**{"trainer.max_steps": 2, "trainer.detect_anomaly": True}), tmp_path / "a")
    assert model.anomaly_detection == [True, True]
    _, model, *_ = train_tiny(tiny_cfg(**{"trainer.max_steps": 2}), tmp_path / "b")
    assert model.anomaly_detection == [False, False]


def test_profile_window_writes_a_tensorboard_trace(tmp_path):
    cfg = tiny_cfg(**{"trainer.max_steps": 4, "trainer.profile": "{start:1,steps:2}"})
    train_tiny(cfg, tmp_path)
    traces = list((tmp_path / "profile").glob("*.pt.trace.json*"))
    assert len(traces) == 1
    text = traces[0].read_text()
    assert "train_step_1" in text and "train_step_2" in text and "train_step_3" not in text


def test_exploding_learning_rate_stops_naming_the_step_and_scenes(tmp_path):
    from fabric_mvsplat.loop import TrainingDiverged

    cfg = tiny_cfg(**{"trainer.max_steps": 6, "optimizer.lr": 1e30, "trainer.gradient_clip_val": 0.5,
                      "checkpointing.every_n_train_steps": 1, "trainer.val_check_interval": None,
                      "optimizer.cosine_lr": False, "optimizer.warm_up_steps": 1})
    with pytest.raises(TrainingDiverged) as error:
        train_tiny(cfg, tmp_path)
    message = str(error.value)
    # Step 0 moves the weights by ~1e30; step 1's loss overflows float32.
    assert "non-finite training loss at global step 1 on rank(s) [0]" in message
    assert "rank 0: ['scene_r0_2', 'scene_r0_3']" in message and "optimizer.lr" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0-step_1.ckpt"]  # finite only


def test_a_loss_without_a_graph_stops_naming_the_step(tmp_path):
    from fabric_mvsplat.loop import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"global step 2 does not require grad on rank\(s\) \[0\].*scene_r0_4"):
        train_tiny(tiny_cfg(**{"trainer.max_steps": 4}), tmp_path, graphless_at_step=2)


def test_accumulating_4_batches_of_1_equals_one_batch_of_4(tmp_path):
    keys = {"trainer.max_steps": 3, "trainer.val_check_interval": None, "trainer.gradient_clip_val": 0.5}
    _, big, big_state, big_stream, *_ = train_tiny(
        tiny_cfg(**keys, **{"data_loader.train.batch_size": 4}), tmp_path / "a", dropout=0.0)
    _, small, state, stream, *_ = train_tiny(
        tiny_cfg(**keys, **{"data_loader.train.batch_size": 1, "trainer.accumulate_grad_batches": 4}),
        tmp_path / "b", dropout=0.0)
    assert state["step"] == 3 and stream.position == 12 and big_stream.position == 3
    assert state["scheduler"].last_epoch == big_state["scheduler"].last_epoch == 3
    assert torch.allclose(flat_parameters(small), flat_parameters(big), rtol=0, atol=1e-6)
    _, unaccumulated, *_ = train_tiny(tiny_cfg(**keys, **{"data_loader.train.batch_size": 1}), tmp_path / "c",
                                      dropout=0.0)
    assert not torch.allclose(flat_parameters(unaccumulated), flat_parameters(big), rtol=0, atol=1e-4)  # a control
    for name in ("loss/total", "train/grad_norm"):
        a = [e.value for e in read_events(tmp_path / "a").Scalars(name)]
        b = [e.value for e in read_events(tmp_path / "b").Scalars(name)]
        assert b == pytest.approx(a, rel=1e-5), name
    assert [e.step for e in read_events(tmp_path / "b").Scalars("loss/total")] == [1, 2, 3]


def test_non_finite_gradients_stop_before_clipping_raises(tmp_path):
    """A finite loss whose gradients overflow: with clipping set, torch's clip_grad_norm_(error_if_nonfinite=True)
    would raise a bare RuntimeError; the loop names the step and scenes instead."""
    from fabric_mvsplat.loop import TrainingDiverged

    cfg = tiny_cfg(**{"trainer.max_steps": 5, "trainer.gradient_clip_val": 0.5, "trainer.val_check_interval": None,
                      "checkpointing.every_n_train_steps": 100})
    with pytest.raises(TrainingDiverged, match=r"non-finite gradients \(norm before clipping: (nan|inf)\) at global step 3; "
                                               r"the step's scenes: rank 0: \['scene_r0_6', 'scene_r0_7'\]"):
        train_tiny(cfg, tmp_path, inf_gradient_at_step=3)
    assert not (tmp_path / "checkpoints").exists()
