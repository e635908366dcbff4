"""Test mode's protocol: DTU run keys, test_len, skipped-scene accounting, empty evaluations, metric inputs,
the nearest-context baseline."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from skimage.metrics import structural_similarity

from fabric_mvsplat.data import TestLoader
from fabric_mvsplat.data.chunk_io import write_chunks
from fabric_mvsplat.data.config import DataLoaderStageCfg, ViewSamplerEvaluationCfg
from fabric_mvsplat.data.synthetic import SyntheticSpec, generate_synthetic_dataset
from fabric_mvsplat.errors import EmptyEvaluationError
from fabric_mvsplat.metrics import nearest_context_images
from fabric_mvsplat.evaluation.test_mode import SceneViews, run_test, score_scene
from loop_fixtures import compose_cfg
from data_fixtures import dataset_cfg, make_scene, make_split

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
TINY_MODEL = ["model.encoder.d_feature=32", "model.encoder.num_depth_candidates=8",
              "model.encoder.costvolume_unet_feat_dim=32", "model.encoder.gradient_checkpointing=false"]


def evaluation_cfg(root: Path, index: dict, **overrides):
    path = root / "evaluation_index.json"
    path.write_text(json.dumps(index))
    return dataset_cfg(root, view_sampler=ViewSamplerEvaluationCfg(index_path=str(path)), **overrides)


def test_runs_of_a_scene_look_up_their_own_index_key(tmp_path):
    """test_times_per_scene = 2: run r of scene k is `k_<r:02d>` in the index (the original's DTU protocol)."""
    keys = make_split(tmp_path / "test", 2)
    index = {f"{key}_{run:02d}": {"context": [run, 6 + run], "target": [3 + run]} for key in keys for run in (0, 1)}
    cfg = evaluation_cfg(tmp_path, index, test_times_per_scene=2)
    batches = list(TestLoader(cfg, DataLoaderStageCfg(), 0, 1))
    assert [b["scene"][0] for b in batches] == [f"{k}_{r:02d}" for k in keys for r in (0, 1)]
    for batch in batches:
        run = int(batch["scene"][0][-2:])
        assert batch["context"]["index"][0].tolist() == [run, 6 + run]
        assert batch["target"]["index"][0].tolist() == [3 + run]


def test_the_original_dtu_index_scores_every_run(tmp_path):
    path = ASSETS / "evaluation_index_dtu_nctx2.json"
    if not path.is_file():
        pytest.skip(f"{path} absent (the original's evaluation index is shipped in ../shared/assets)")
    index = json.loads(path.read_text())
    runs = sorted(key for key in index if key.startswith("scan1_train_"))
    assert runs == ["scan1_train_00", "scan1_train_01", "scan1_train_02", "scan1_train_03"]
    write_chunks([make_scene("scan1_train", 49, 12, 16, seed=0)], tmp_path / "test")  # DTU scans have 49 views
    cfg = dataset_cfg(tmp_path, height=12, width=16, test_times_per_scene=4,
                      view_sampler=ViewSamplerEvaluationCfg(index_path=str(path)))
    loader = TestLoader(cfg, DataLoaderStageCfg(), 0, 1)
    batches = list(loader)
    assert [b["scene"][0] for b in batches] == runs
    for batch, run in zip(batches, runs):
        assert batch["context"]["index"][0].tolist() == index[run]["context"]
        assert batch["target"]["index"][0].tolist() == index[run]["target"]
    assert loader.index_skip_counts == {}


def test_test_len_counts_usable_scenes(tmp_path):
    """The original capped the batches that came out: scenes the index lacks do not use up test_len."""
    keys = make_split(tmp_path / "test", 5)
    entry = {"context": [0, 6], "target": [3]}
    index = {keys[0]: None, keys[2]: entry, keys[3]: entry, keys[4]: entry}  # keys[1] is missing
    loader = TestLoader(evaluation_cfg(tmp_path, index, test_len=2), DataLoaderStageCfg(), 0, 1)
    assert [b["scene"][0] for b in loader] == [keys[2], keys[3]]
    assert loader.index_skip_counts == {"null_in_index": 1, "not_in_index": 1}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, SyntheticSpec(train_scenes=1, test_scenes=3, frames=12, height=32, width=32,
                                                     seed=5, context_gap=6), progress=False)
    return root


def make_test_cfg(root: Path, index_path: Path, out: Path, *extra: str):
    return compose_cfg(["+experiment=demo", f"dataset.roots=[{root}]", "dataset.image_shape=[32,32]", *TINY_MODEL,
                        "mode=test", "dataset/view_sampler=evaluation", f"dataset.view_sampler.index_path={index_path}",
                        f"test.output_path={out}", "checkpointing.load=unused.ckpt", *extra])


def run_in_process(cfg):
    from lightning_fabric import Fabric

    from fabric_mvsplat.build import make_model

    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1)
    return run_test(fabric, cfg, make_model(cfg), TestLoader(cfg.dataset, cfg.data_loader.test, 0, 1))


def test_counts_of_rendered_scored_and_skipped_scenes(synthetic_root, tmp_path):
    index = json.loads((synthetic_root / "evaluation_index.json").read_text())
    keys = sorted(index)
    index[keys[0]] = None
    index[keys[1]]["target"] = [99]  # past the scene's 12 frames: filtered when loading
    index_path = tmp_path / "index.json"
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    averages = run_in_process(make_test_cfg(synthetic_root, index_path, out, "test.save_image=true"))
    assert averages["num_rendered"] == averages["num_scored"] == averages["num_scenes"] == 1
    assert averages["num_skipped"] == {"not_in_index": 0, "null_in_index": 1, "corrupt": 0, "filtered": 1}
    assert averages["skip_reasons"] == {"null_in_index": 1, "index_frame_out_of_range": 1}
    assert json.loads((out / "demo" / "scores_all_avg.json").read_text())["num_skipped"]["filtered"] == 1
    # The scored scene has ground-truth depth: the depth errors and both baselines are reported.
    assert 0 <= averages["depth_abs_rel"] and 0 <= averages["depth_delta_1_25"] <= 1
    assert averages["num_scenes_with_depth"] == 1
    # ... and where along the depth range the errors lie: bins log-spaced from near (1) to far (20)
    bins = averages["depth_by_true_depth"]
    assert bins[0]["from"] == pytest.approx(1.0) and bins[-1]["to"] == pytest.approx(20.0) and len(bins) == 6
    assert sum(row["share"] for row in bins) == pytest.approx(1.0)
    [scene] = json.loads((out / "demo" / "scores_per_scene.json").read_text())
    assert sum(row[0] for row in scene["depth_sums_by_true_depth"]) > 0
    assert math.isfinite(averages["psnr_nearest_context_baseline"])
    # Saved beside each render: what a person compares it with, without the dataset.
    scene_dir = out / "demo" / keys[2]
    for frame in index[keys[2]]["target"]:
        for folder in ("color", "ground_truth", "depth", "depth_ground_truth"):
            assert (scene_dir / folder / f"{frame:06d}.png").is_file(), folder
    for frame in index[keys[2]]["context"]:
        assert (scene_dir / "context" / f"{frame:06d}.png").is_file()

    rendered_only = run_in_process(make_test_cfg(synthetic_root, index_path, tmp_path / "out2", "test.compute_scores=false",
                                            "test.save_image=false"))
    assert rendered_only["num_rendered"] == 1 and rendered_only["num_scored"] == 0


def test_an_evaluation_that_scores_nothing_fails_naming_the_reasons(synthetic_root, tmp_path):
    index_path = tmp_path / "index.json"
    index_path.write_text(json.dumps({"some-other-scene": {"context": [0, 6], "target": [3]}}))
    out = tmp_path / "out"
    with pytest.raises(EmptyEvaluationError, match="not_in_index: 3"):
        run_in_process(make_test_cfg(synthetic_root, index_path, out))
    written = json.loads((out / "demo" / "scores_all_avg.json").read_text())
    assert written["num_scored"] == 0 and written["num_skipped"]["not_in_index"] == 3


def test_the_command_line_exits_non_zero_on_an_empty_evaluation(synthetic_root, tmp_path):
    """The DTU case this guards: T > 1 runs against an index without the `_<run>` keys score nothing."""
    overrides = ["+experiment=demo", f"dataset.roots=[{synthetic_root}]", "dataset.image_shape=[32,32]", *TINY_MODEL,
                 "mode=test", "dataset/view_sampler=evaluation", "dataset.test_times_per_scene=2",
                 f"test.output_path={tmp_path / 'out'}", f"output_dir={tmp_path / 'run'}"]
    from fabric_mvsplat.checkpoint import save_atomically
    from fabric_mvsplat.build import make_model

    checkpoint = tmp_path / "weights.ckpt"
    save_atomically({"state_dict": make_model(compose_cfg(overrides + ["checkpointing.load=x"])).state_dict(),
                     "global_step": 0}, checkpoint)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "fabric_mvsplat.train", *overrides,
                             f"checkpointing.load={checkpoint}"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-3000:]
    assert "scored no scene (not_in_index: 6)" in result.stderr


def test_ssim_and_lpips_see_the_unclamped_render_psnr_clips():
    generator = torch.Generator().manual_seed(0)
    ground_truth = torch.rand(2, 3, 24, 24, generator=generator) * 0.8
    rendered = ground_truth.clone()
    rendered[:, :, :8, :8] = 1.0
    overshooting = rendered.clone()
    overshooting[:, :, :8, :8] = 1.7  # the same image once clipped to [0, 1]
    seen = []

    def lpips_metric(prediction, truth, normalize):  # records what LPIPS is given
        seen.append(prediction.max().item())
        return torch.zeros(len(prediction))

    context, indices = ground_truth[:1], torch.tensor([0])
    plain = score_scene(SceneViews("s", rendered, ground_truth, context, indices, torch.tensor([1, 2])))
    over = score_scene(SceneViews("s", overshooting, ground_truth, context, indices, torch.tensor([1, 2])),
                       lpips_metric)
    assert over.psnr == pytest.approx(plain.psnr)
    assert over.ssim < plain.ssim - 1e-3
    expected = [structural_similarity(t.numpy(), p.numpy(), win_size=11, gaussian_weights=True, channel_axis=0,
                                      data_range=1.0) for t, p in zip(ground_truth, overshooting)]
    assert over.ssim == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert seen == [pytest.approx(1.7)]


def test_nearest_context_baseline_on_a_known_case():
    context_images = torch.stack([torch.full((3, 16, 16), 0.2), torch.full((3, 16, 16), 0.6)])
    context_indices, target_indices = torch.tensor([10, 20]), torch.tensor([12, 16, 19, 15])
    picked = nearest_context_images(context_images, context_indices, target_indices)
    assert [round(float(p.mean()), 3) for p in picked] == [0.2, 0.6, 0.6, 0.2]  # 15: a tie goes to the first
    # Targets 0.1 away from their nearest context image: MSE 0.01 -> exactly 20 dB.
    ground_truth = picked + 0.1
    scores = score_scene(SceneViews("s", ground_truth, ground_truth, context_images, context_indices,
                                    target_indices))
    assert scores.psnr_nearest_context == pytest.approx(20.0, abs=1e-4)
    assert scores.psnr == math.inf or scores.psnr > 100


def test_lpips_is_scored_through_either_key_and_said_missing_otherwise(synthetic_root, tmp_path, capsys):
    from lpips_test_weights import write_lpips_test_weights

    weights = tmp_path / "lpips"
    write_lpips_test_weights(weights, seed=0)
    index_path = synthetic_root / "evaluation_index.json"
    through_test = run_in_process(make_test_cfg(synthetic_root, index_path, tmp_path / "a",
                                                f"test.lpips_weights={weights}"))
    through_loss = run_in_process(make_test_cfg(synthetic_root, index_path, tmp_path / "b", "loss=[mse,lpips]",
                                                f"loss.lpips.weights={weights}"))
    assert 0 < through_test["lpips"] < 1 and through_test["lpips"] == through_loss["lpips"]
    assert len(json.loads((tmp_path / "b" / "demo" / "scores_lpips_all.json").read_text())) == 3
    capsys.readouterr()
    without = run_in_process(make_test_cfg(synthetic_root, index_path, tmp_path / "c"))
    written = json.loads((tmp_path / "c" / "demo" / "scores_all_avg.json").read_text())
    assert without["lpips"] is None and written["lpips"] is None
    for text in (written["lpips_not_computed"], capsys.readouterr().out):
        assert "LPIPS not computed" in text and "test.lpips_weights" in text and "loss.lpips.weights" in text
    assert not (tmp_path / "c" / "demo" / "scores_lpips_all.json").exists()


def test_both_timings_are_reported_and_depth_is_rendered_outside_the_timed_part(synthetic_root, tmp_path,
                                                                                monkeypatch, capsys):
    """The timed part is the encoder and the colour render (the original's); depth comes after the clock stops."""
    from fabric_mvsplat.evaluation import test_mode
    from fabric_mvsplat.model.mvsplat import MVSplat

    events: list[str] = []
    for method in ("start", "mark", "finish"):
        original = getattr(test_mode.BatchClock, method)

        def recorded(self, *args, _original=original, _name=method):
            events.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(test_mode.BatchClock, method, recorded)
    render_views = MVSplat.render_views

    def recorded_render(self, *args, depth_mode=None, **kwargs):
        events.append(f"render depth={depth_mode}")
        return render_views(self, *args, depth_mode=depth_mode, **kwargs)

    monkeypatch.setattr(MVSplat, "render_views", recorded_render)
    averages = run_in_process(make_test_cfg(synthetic_root, synthetic_root / "evaluation_index.json", tmp_path / "o",
                                            "test.eval_time_skip_steps=1", "test.save_image=true"))
    per_scene = ["start", "mark", "render depth=None", "mark", "finish", "render depth=expected_depth"]
    assert events == per_scene * 3
    for key in ("encoder", "decoder", "encoder_synchronised", "decoder_synchronised", "scene_synchronised"):
        calls, seconds = averages[key]
        views = 1 if key in ("encoder", "encoder_synchronised", "scene_synchronised") else 3  # 3 targets a scene
        assert calls == 2 * views and seconds > 0, key  # 3 scenes, the first skipped as warm-up
    assert "original's method" in averages["timing_note"] and "synchronised" in averages["timing_note"]
    written = json.loads((tmp_path / "o" / "demo" / "benchmark.json").read_text())
    assert len(written["encoder"]) == 2 and len(written["decoder_synchronised"]) == 6
    out = capsys.readouterr().out
    assert "test timing, the original's method (host clock, not synchronised" in out
    assert "test timing, synchronised: encoder" in out
