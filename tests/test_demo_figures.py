"""The README's demo figures: TensorBoard scalars read back without TensorBoard, the labelled scene picture."""

import json

import numpy as np
import pytest
from PIL import Image

from fabric_mvsplat.visualization.demo_figures import main, read_scalars


def write_run(run_dir, steps=40):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(logdir=str(run_dir / "tensorboard"))
    for step in range(1, steps + 1):
        writer.add_scalar("loss/total", 1.0 / step, global_step=step)
        if step % 10 == 0:
            writer.add_scalar("val/psnr", 10 + step / 10, global_step=step)
    writer.add_image("comparison", np.zeros((3, 4, 4), dtype=np.float32), global_step=steps)
    writer.close()
    (run_dir / "config.yaml").write_text("dataset:\n  near: 1.0\n  far: 20.0\nwandb:\n  name: demo\n"
                                         "test:\n  output_path: outputs/test\n")


def test_scalars_match_what_tensorboard_reads(tmp_path):
    write_run(tmp_path)
    ours = read_scalars(tmp_path / "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    for tag in ("loss/total", "val/psnr"):
        theirs = [(e.step, e.value) for e in accumulator.Scalars(tag)]
        assert [s for s, _ in ours[tag]] == [s for s, _ in theirs]
        assert [v for _, v in ours[tag]] == pytest.approx([v for _, v in theirs])
    assert len(ours["loss/total"]) == 40 and len(ours["val/psnr"]) == 4


def test_validation_psnr_is_drawn_as_dots_not_a_line():
    """Each validation scores another scene, so a line between them would draw a trend that is not there."""
    from fabric_mvsplat.visualization.demo_figures import training_curve

    red = (200, 30, 30)
    scalars = {"loss/total": [(s, 1.0 / s) for s in range(1, 41)], "val/psnr": [(10, 20.0), (40, 30.0)]}
    pixels = np.asarray(training_curve(scalars))
    is_red = (pixels == red).all(axis=-1)
    columns = np.flatnonzero(is_red.any(axis=0))
    # two dots of 7 px (and the legend's text), nothing in the long gap between them
    gaps = np.diff(columns)
    assert gaps.max() > 100, columns


def write_test_outputs(test_dir):
    scene = test_dir / "abc"
    rng = np.random.default_rng(0)
    for folder, frames in (("context", [0, 8]), ("ground_truth", [2, 5]), ("color", [2, 5]), ("depth", [2, 5]),
                           ("depth_ground_truth", [2, 5])):
        (scene / folder).mkdir(parents=True)
        for frame in frames:
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(scene / folder / f"{frame:06d}.png")
    (test_dir / "scores_per_scene.json").write_text(json.dumps([
        {"scene": "abc", "psnr": 25.0, "psnr_nearest_context": 19.0, "depth_abs_rel": 0.1}]))
    bins = [{"from": 1.0, "to": 4.5, "share": 0.0, "abs_rel": None, "ratio": None, "delta_1_25": None},
            {"from": 4.5, "to": 20.0, "share": 1.0, "abs_rel": 0.3, "ratio": 0.6, "delta_1_25": 0.4}]
    (test_dir / "scores_all_avg.json").write_text(json.dumps({"psnr": 25.0, "depth_by_true_depth": bins}))


def test_demo_figures_from_a_run_and_its_test_outputs(tmp_path):
    run_dir, test_dir, out = tmp_path / "run", tmp_path / "test", tmp_path / "docs"
    write_run(run_dir)
    write_test_outputs(test_dir)
    main([str(run_dir), "--test-dir", str(test_dir), "--out", str(out)])
    comparison = Image.open(out / "demo_comparison.png")
    curve = Image.open(out / "demo_training_curve.png")
    # 5 labelled rows of 16-px images zoomed to 96 px, the caption line, a label column left of the images.
    assert comparison.height > 5 * 96 + 16 and comparison.width > 2 * 96 + 30
    assert curve.width >= 600 and curve.height >= 200
    pixels = np.asarray(comparison.convert("L"))
    assert (pixels[20:, :30] < 128).any()  # the row labels are drawn
    by_depth = np.asarray(Image.open(out / "demo_depth_by_true_depth.png").convert("RGB"))
    red_columns = np.flatnonzero(((by_depth == (200, 30, 30)).all(axis=-1)).any(axis=0))
    assert red_columns.size > 20 and red_columns.max() < by_depth.shape[1] // 2  # one AbsRel bar, left panel


def test_the_depth_figure_is_left_out_where_the_test_scored_no_depth(tmp_path):
    run_dir, test_dir, out = tmp_path / "run", tmp_path / "test", tmp_path / "docs"
    write_run(run_dir)
    write_test_outputs(test_dir)
    (test_dir / "scores_all_avg.json").write_text(json.dumps({"psnr": 25.0}))
    main([str(run_dir), "--test-dir", str(test_dir), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["demo_comparison.png", "demo_training_curve.png"]


def test_by_default_the_figures_go_beside_the_run(tmp_path, monkeypatch):
    """Without --out: RUN_DIR/figures, never a docs/ folder; the test outputs are found where the run's
    config says test mode writes them (test.output_path/<wandb.name>, relative to where you run)."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / "demo"
    write_run(run_dir)
    write_test_outputs(tmp_path / "outputs" / "test" / "demo")
    main(["outputs/demo"])
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == ["demo_comparison.png",
                                                                       "demo_depth_by_true_depth.png",
                                                                       "demo_training_curve.png"]
    assert not (tmp_path / "docs").exists()
