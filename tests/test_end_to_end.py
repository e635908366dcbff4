"""The real model on synthetic scenes: training steps, validation visuals, test mode, released checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from conftest import demo_overrides, read_events, run_train, shared_path
from loop_fixtures import compose_cfg

from fabric_mvsplat.data import StepTracker, TrainStream
from fabric_mvsplat.errors import UserError
from fabric_mvsplat.build import make_model
from fabric_mvsplat.train import run

# One worker runs this file under pytest-xdist: its tests share one trained demo checkpoint and one test-mode run
# (session fixtures in conftest.py), made once per worker.
pytestmark = pytest.mark.xdist_group("demo_run")


def test_training_steps_reduce_the_loss_on_a_fixed_batch(synthetic_root):
    torch.manual_seed(0)
    cfg = compose_cfg(demo_overrides(synthetic_root))
    model = make_model(cfg)
    stream = TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)
    batch = next(iter(stream))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(12):
        output = model(batch, step)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert set(output.logs) >= {"loss/mse", "loss/depth", "loss/ssim", "loss/total", "train/psnr", "info/near", "info/far"}
    assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_validation_step_gives_scores_a_comparison_image_and_videos(synthetic_root):
    cfg = compose_cfg(demo_overrides(synthetic_root, "train.video_frames=4"))
    model = make_model(cfg).eval()
    stream = TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)
    output = model.validation_step(next(iter(stream)), global_step=0)
    assert set(output.scalars) == {"val/psnr", "val/ssim", "val/plane_sweep_commonest_share"}  # no LPIPS weights
    assert 0 < output.scalars["val/plane_sweep_commonest_share"] <= 1
    assert 0 < output.scalars["val/psnr"] < 60 and -1 <= output.scalars["val/ssim"] <= 1
    grid = output.images["comparison"]
    assert grid.shape[0] == 3 and grid.shape[1] > 4 * 32 and 0 <= grid.min() and grid.max() <= 1
    assert output.videos["interpolation"].shape == (6, 3, 64, 32)  # 4 frames forth, 2 back, RGB over depth
    assert output.videos["wobble"].shape == (14, 3, 64, 32)  # 8 eased frames forth, 6 back


def test_demo_trains_validates_and_checkpoints(demo_training):
    cwd, run_dir = demo_training
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert [c.name for c in checkpoints] == ["epoch_0-step_2.ckpt"]
    state = torch.load(checkpoints[0], weights_only=True)
    assert state["global_step"] == 2 and all(k.startswith("encoder.") for k in state["state_dict"])

    events = read_events(run_dir / "tensorboard")
    tags = events.Tags()
    assert {"loss/mse", "loss/total", "train/psnr", "val/psnr", "val/ssim"} <= set(tags["scalars"])
    assert any("comparison" in tag for tag in tags["images"])
    assert any("interpolation" in tag for tag in tags["images"])  # tensorboardX stores videos as GIF images
    # Hydra made no outputs/<date>/<time> of its own; its log is in output_dir with the run's config.
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]
    assert (run_dir / "config.yaml").is_file() and f"output directory: {run_dir}" in (run_dir / "train.log").read_text()


def test_demo_test_mode_writes_scores_images_videos_and_gaussians(demo_test_run, synthetic_root):
    result_dir = demo_test_run
    averages = json.loads((result_dir / "scores_all_avg.json").read_text())
    psnr = json.loads((result_dir / "scores_psnr_all.json").read_text())
    assert len(psnr) == 3 == averages["num_scenes"] and all(5 < p < 60 for p in psnr)
    assert 0 < averages["ssim"] <= 1 and averages["encoder"][0] == 2  # first batch skipped as warm-up
    index = json.loads((synthetic_root / "evaluation_index.json").read_text())
    for scene, entry in index.items():
        for frame in entry["target"]:
            assert (result_dir / scene / "color" / f"{frame:06d}.png").is_file()
        assert (result_dir / "gaussians" / f"{scene}.ply").stat().st_size > 0
        first, last = entry["context"]
        assert (result_dir / "video" / f"{scene}_frame_{first}_{last}.mp4").stat().st_size > 0
    for name in ("benchmark.json", "peak_memory.json", "scores_ssim_all.json"):
        assert (result_dir / name).is_file()


def test_test_mode_scores_are_identical_on_one_and_two_ranks(synthetic_root, trained_checkpoint, demo_test_run,
                                                             tmp_path):
    one_rank = json.loads((demo_test_run / "scores_per_scene.json").read_text())
    out = tmp_path / "out"
    run_train(demo_overrides(synthetic_root, "mode=test", "dataset/view_sampler=evaluation",
                             f"checkpointing.load={trained_checkpoint}", f"test.output_path={out}",
                             "test.save_image=false", f"output_dir={tmp_path / 'run'}"),
              cwd=tmp_path, nproc=2)
    two_ranks = json.loads((out / "demo" / "scores_per_scene.json").read_text())
    assert len(one_rank) == 3
    assert two_ranks == one_rank


def test_resume_tells_the_story_and_keeps_output_dir(demo_training, synthetic_root, tmp_path, capsys):
    """A resume that fails changes nothing in output_dir; one that loads writes its config beside the first and
    tells the story: a line per validation and per checkpoint, then the summary with the test-mode command."""
    import shutil

    from fabric_mvsplat.checkpoint import CheckpointError
    from fabric_mvsplat.train import run

    run_dir = tmp_path / "run"
    shutil.copytree(demo_training[1], run_dir)  # the shared run stays as it is

    def files():
        return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    before = files()
    keys = [f"output_dir={run_dir}", "trainer.max_steps=3", "trainer.val_check_interval=3",
            "trainer.num_sanity_val_steps=0", "train.video_frames=3", "checkpointing.every_n_train_steps=100"]
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        run(compose_cfg(demo_overrides(synthetic_root, *keys, f"checkpointing.load={run_dir / 'missing.ckpt'}")),
            run_dir, config_yaml="the failed run's config")
    assert files() == before
    capsys.readouterr()
    run(compose_cfg(demo_overrides(synthetic_root, *keys, "checkpointing.load=latest")), run_dir,
        config_yaml="the resumed run's config")
    out = capsys.readouterr().out
    assert (run_dir / "config.yaml").read_bytes() == before["config.yaml"]
    assert (run_dir / "config_resumed_at_step_2.yaml").read_text() == "the resumed run's config"
    last = run_dir / "checkpoints" / "epoch_0-step_3.ckpt"
    assert last.is_file()
    assert "step 3: validation (" in out and "val/psnr" in out and f"step 3: saved checkpoint {last}" in out
    assert "steps 2 -> 3" in out and "validation PSNR: last" in out and "validation depth: AbsRel" in out
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in out
    assert f"test it with: python -m fabric_mvsplat.train mode=test checkpointing.load={last}" in out
    # ... and the render command for the same checkpoint (tests/test_render.py runs it).
    assert f"render it (Gaussians, video, depth; then the viewer): python -m fabric_mvsplat.render {last} --chunks" in out




def lightning_checkpoint_from_golden(path: Path) -> dict:
    golden = shared_path("golden", "encoder_small")
    state_dict = torch.load(golden / "state_dict.pt", weights_only=True)
    checkpoint = {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.2.4",
                  "state_dict": {f"encoder.{k}": v for k, v in state_dict.items()},
                  "optimizer_states": [], "lr_schedulers": []}
    torch.save(checkpoint, path)
    return state_dict


# The golden small encoder's layout (golden/README.md) on top of the demo: the original's full-width Gaussian head,
# 32-channel depth U-Net with attention and degree-4 colours not started at the pixels' (the demo changes each).
GOLDEN_SMALL = ["model.encoder.d_feature=64", "model.encoder.num_depth_candidates=16",
                "model.encoder.costvolume_unet_feat_dim=64", "model.encoder.depth_unet_feat_dim=32",
                "model.encoder.depth_unet_attn_res=[16]", "model.encoder.gaussian_head_hidden_channels=null",
                "model.encoder.gaussian_adapter.colour_from_pixel=false", "model.encoder.gaussian_adapter.sh_degree=4"]


def test_original_lightning_checkpoint_loads_for_test_and_fine_tuning(synthetic_root, tmp_path):
    from fabric_mvsplat.checkpoint import load_weights

    path = tmp_path / "released.ckpt"
    golden = lightning_checkpoint_from_golden(path)
    overrides = ["+experiment=demo", f"dataset.roots=[{synthetic_root}]", "dataset.image_shape=[32,32]", *GOLDEN_SMALL]
    model = make_model(compose_cfg([*overrides, "mode=test", f"checkpointing.load={path}"]))
    load_weights(model, path)
    for key, value in golden.items():  # test mode builds and loads the model exactly so (train.run_test_mode)
        assert torch.equal(model.encoder.state_dict()[key], value), key

    run_dir = tmp_path / "finetune"
    result = run_train([*overrides, f"checkpointing.load={path}", "checkpointing.resume=false", "trainer.max_steps=1",
                      "trainer.val_check_interval=null", "checkpointing.every_n_train_steps=1",
                      f"output_dir={run_dir}"], cwd=tmp_path)
    assert "loaded weights" in result.stdout
    fine_tuned = torch.load(run_dir / "checkpoints" / "epoch_0-step_1.ckpt", weights_only=True)
    assert fine_tuned["global_step"] == 1  # a fresh step counter, not the released 1000


def test_three_context_views_in_test_mode(synthetic_root, tmp_path):
    """The DTU protocol's 3-view index: contexts [a, b, c] and `num_context_views=3`."""
    index = json.loads((synthetic_root / "evaluation_index.json").read_text())
    three_views = {key: {"context": [e["context"][0], e["context"][1], (e["context"][0] + e["context"][1]) // 2],
                         "target": e["target"][:1]} for key, e in index.items()}
    index_path = tmp_path / "index_nctx3.json"
    index_path.write_text(json.dumps(three_views))
    torch.manual_seed(2)
    overrides = demo_overrides(synthetic_root, "mode=test", "dataset/view_sampler=evaluation",
                               f"dataset.view_sampler.index_path={index_path}",
                               "dataset.view_sampler.num_context_views=3")
    checkpoint = tmp_path / "weights.ckpt"
    cfg = compose_cfg([*overrides, f"checkpointing.load={checkpoint}"])
    torch.save({"state_dict": make_model(cfg).state_dict()}, checkpoint)
    out = tmp_path / "out"
    run_train([*overrides, f"checkpointing.load={checkpoint}", f"test.output_path={out}", "test.save_image=false",
             "test.save_gaussians=true", f"output_dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert len(json.loads((out / "demo" / "scores_psnr_all.json").read_text())) == 3
    from fabric_mvsplat.model.ply_export import read_ply

    ply = read_ply(next((out / "demo" / "gaussians").glob("*.ply")))
    assert len(ply["x"]) == 3 * 32 * 32  # one Gaussian per pixel of each of the 3 context views


def test_train_stream_epoch_counts_passes_for_checkpoint_names(synthetic_root):
    cfg = compose_cfg(demo_overrides(synthetic_root, "data_loader.train.batch_size=2"))
    stream = TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)
    batches = iter(stream)
    epochs = []
    for _ in range(3):  # 4 training scenes, 2 per batch: passes 0, 0, 1
        next(batches)
        epochs.append(stream.epoch)
    assert epochs == [0, 0, 1]


def test_a_fresh_run_refuses_a_folder_with_another_runs_checkpoints(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "epoch_4-step_300.ckpt").write_bytes(b"an earlier run")
    cfg = compose_cfg(demo_overrides(synthetic_root, f"output_dir={run_dir}", "trainer.max_steps=1"))
    with pytest.raises(UserError, match="already holds checkpoints.*checkpointing.load="):
        run(cfg, run_dir)  # main turns a UserError into one line and exit code 2 (test_user_errors)
    assert (run_dir / "checkpoints" / "epoch_4-step_300.ckpt").read_bytes() == b"an earlier run"
    assert not (run_dir / "tensorboard").exists()
