"""The explicit loop: step semantics, validation cadence, logging, schedules and debugging aids."""

from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from loop_fixtures import TinyModel, tiny_cfg, train_tiny

from fabric_mvsplat.config import OptimizerCfg
from fabric_mvsplat.train import make_scheduler


def read_events(output_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((output_dir / "tensorboard").glob("events.out.tfevents*"))
    assert len(files) == 1
    events = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_step_semantics_and_validation_at_every_interval(tmp_path):
    cfg = tiny_cfg(**{"trainer.max_steps": 10, "trainer.val_check_interval": 2,
                      "checkpointing.every_n_train_steps": 100})
    _, model, state, stream, val_source = train_tiny(cfg, tmp_path)
    assert state["global_step"] == 10
    assert model.seen_steps == list(range(10))  # 0-based, as Lightning's global_step
    # 1 sanity batch, then every 2 steps: a 1-scene validation split never runs dry.
    assert model.validation_steps == [0, 2, 4, 6, 8, 10]
    assert val_source.served == 6
    assert model.training  # back in train mode after validation
    assert stream.position == 10


def test_tensorboard_scalars_images_and_videos(tmp_path):
    cfg = tiny_cfg(**{"trainer.max_steps": 4, "trainer.val_check_interval": 2, "train.print_log_every_n_steps": 2})
    train_tiny(cfg, tmp_path)
    events = read_events(tmp_path)
    tags = events.Tags()
    for tag in ("loss/total", "loss/mse", "info/near", "info/global_step", "train/lr",
                "train/scenes_per_second", "data/skipped_scenes", "val/mse"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("loss/total")] == [1, 3]  # every 2 steps, at the step's index
    assert [e.value for e in events.Scalars("info/global_step")] == [1, 3]
    assert [e.step for e in events.Scalars("val/mse")] == [0, 2, 4]
    assert all(e.value > 0 for e in events.Scalars("train/scenes_per_second"))
    assert "comparison" in tags["images"] and "video/rgb" in tags["images"]  # tensorboardX videos are GIFs


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
    assert "trainer.detect_anomaly=true" in message and "optimizer.lr" in message


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
