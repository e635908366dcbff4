"""The original's command lines without exceptions: every key (with its shipped value) of its main.yaml, dataset,
view sampler, encoder, decoder and loss configs and of its re10k / acid / dtu experiments composes here, and a
command line made of them trains a step (and, for DTU, tests) through `python -m fabric_mvsplat.train`.

Only what cannot run on a test machine is changed: the dataset root (synthetic scenes), the image size (64 px
instead of 256: every model key keeps the experiment's value), the batch size, the data workers and the step
count. The keys are written out here from the original's config files (see ../shared/spec, section 2), so a key
or value this project stops accepting fails here.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_train, synthetic_dataset
from loop_fixtures import compose_cfg

from fabric_mvsplat.data import StepTracker, TrainStream
from fabric_mvsplat.build import make_model

# config/main.yaml of the original, every key with its value.
ORIGINAL_MAIN = [
    "wandb.project=mvsplat", "wandb.entity=placeholder", "wandb.name=placeholder", "wandb.mode=disabled",
    "wandb.id=null", "mode=train", "dataset.overfit_to_scene=null",
    "data_loader.train.num_workers=10", "data_loader.train.persistent_workers=true",
    "data_loader.train.batch_size=4", "data_loader.train.seed=1234",
    "data_loader.test.num_workers=4", "data_loader.test.persistent_workers=false",
    "data_loader.test.batch_size=1", "data_loader.test.seed=2345",
    "data_loader.val.num_workers=1", "data_loader.val.persistent_workers=true",
    "data_loader.val.batch_size=1", "data_loader.val.seed=3456",
    "optimizer.lr=2.e-4", "optimizer.warm_up_steps=2000", "optimizer.cosine_lr=true",
    "checkpointing.load=null", "checkpointing.every_n_train_steps=20000", "checkpointing.save_top_k=-1",
    "checkpointing.pretrained_model=null", "checkpointing.resume=true",
    "train.depth_mode=null", "train.extended_visualization=false", "train.print_log_every_n_steps=1",
    "test.output_path=outputs/test", "test.compute_scores=false", "test.eval_time_skip_steps=0",
    "test.save_image=true", "test.save_video=false", "seed=111123",
    "trainer.max_steps=-1", "trainer.val_check_interval=0.5", "trainer.gradient_clip_val=0.5",
    "trainer.num_sanity_val_steps=2", "trainer.num_nodes=1", "output_dir=null",
]
# config/dataset/re10k.yaml, view_sampler/bounded.yaml (+ the bounded_re10k overlay), model/encoder/costvolume.yaml,
# model/decoder/splatting_cuda.yaml and loss/{mse,lpips}.yaml.
ORIGINAL_GROUPS = [
    "dataset.name=re10k", "dataset.roots=[datasets/re10k]", "dataset.make_baseline_1=true", "dataset.augment=true",
    "dataset.image_shape=[180,320]", "dataset.background_color=[0.0,0.0,0.0]", "dataset.cameras_are_circular=false",
    "dataset.baseline_epsilon=1e-3", "dataset.max_fov=100.0", "dataset.skip_bad_shape=true", "dataset.near=-1.",
    "dataset.far=-1.", "dataset.baseline_scale_bounds=true", "dataset.shuffle_val=true", "dataset.test_len=-1",
    "dataset.test_chunk_interval=1", "dataset.test_times_per_scene=1",
    "dataset.view_sampler.name=bounded", "dataset.view_sampler.num_target_views=4",
    "dataset.view_sampler.num_context_views=2", "dataset.view_sampler.min_distance_between_context_views=45",
    "dataset.view_sampler.max_distance_between_context_views=192",
    "dataset.view_sampler.min_distance_to_context_views=0", "dataset.view_sampler.warm_up_steps=150_000",
    "dataset.view_sampler.initial_min_distance_between_context_views=25",
    "dataset.view_sampler.initial_max_distance_between_context_views=45",
    "model.encoder.name=costvolume", "model.encoder.opacity_mapping.initial=0.0",
    "model.encoder.opacity_mapping.final=0.0", "model.encoder.opacity_mapping.warm_up=1",
    "model.encoder.num_depth_candidates=32", "model.encoder.num_surfaces=1", "model.encoder.gaussians_per_pixel=1",
    "model.encoder.gaussian_adapter.gaussian_scale_min=0.5", "model.encoder.gaussian_adapter.gaussian_scale_max=15.0",
    "model.encoder.gaussian_adapter.sh_degree=4", "model.encoder.d_feature=128",
    "model.encoder.visualizer.num_samples=8", "model.encoder.visualizer.min_resolution=256",
    "model.encoder.visualizer.export_ply=false",
    "model.encoder.unimatch_weights_path=checkpoints/gmdepth-scale1-resumeflowthings-scannet-5d9d7964.pth",
    "model.encoder.multiview_trans_attn_split=2", "model.encoder.costvolume_unet_feat_dim=128",
    "model.encoder.costvolume_unet_channel_mult=[1,1,1]", "model.encoder.costvolume_unet_attn_res=[]",
    "model.encoder.depth_unet_feat_dim=64", "model.encoder.depth_unet_attn_res=[]",
    "model.encoder.depth_unet_channel_mult=[1,1,1]", "model.encoder.downscale_factor=4",
    "model.encoder.shim_patch_size=4", "model.encoder.wo_depth_refine=false", "model.encoder.wo_cost_volume=false",
    "model.encoder.wo_backbone_cross_attn=false", "model.encoder.wo_cost_volume_refine=false",
    "model.encoder.use_epipolar_trans=false", "model.decoder.name=splatting_cuda",
    "loss.mse.weight=1.0", "+loss.lpips.weight=0.05", "+loss.lpips.apply_after_step=150_000",
]
# config/experiment/{re10k,acid,dtu}.yaml (after their group overrides).
EXPERIMENT = {
    "re10k": ["wandb.name=re10k", "wandb.tags=[re10k,256x256]", "dataset.roots=[datasets/re10k]",
              "dataset.near=1.", "dataset.far=100."],
    "acid": ["wandb.name=acid", "wandb.tags=[acid,256x256]", "dataset.roots=[datasets/acid]",
             "dataset.near=1.", "dataset.far=100."],
    "dtu": ["wandb.name=dtu/views2", "wandb.tags=[dtu,256x256]", "dataset.roots=[datasets/dtu]",
            "dataset.near=2.125", "dataset.far=4.525", "dataset.test_times_per_scene=4",
            "dataset.skip_bad_shape=false"],
}
EXPERIMENT_COMMON = [
    "data_loader.train.batch_size=14", "trainer.max_steps=300_001", "model.encoder.num_depth_candidates=128",
    "model.encoder.costvolume_unet_feat_dim=128", "model.encoder.costvolume_unet_channel_mult=[1,1,1]",
    "model.encoder.costvolume_unet_attn_res=[4]", "model.encoder.gaussians_per_pixel=1",
    "model.encoder.depth_unet_feat_dim=32", "model.encoder.depth_unet_attn_res=[16]",
    "model.encoder.depth_unet_channel_mult=[1,1,1,1,1]", "loss.lpips.apply_after_step=0", "loss.lpips.weight=0.05",
    "dataset.image_shape=[256,256]", "dataset.baseline_scale_bounds=false", "dataset.make_baseline_1=false",
    "test.eval_time_skip_steps=5", "test.compute_scores=true",
]
# The ablations of the original's more_commands.sh.
ABLATIONS = [["model.encoder.wo_depth_refine=true"],
             ["model.encoder.wo_depth_refine=true", "model.encoder.wo_cost_volume=true"],
             ["model.encoder.wo_depth_refine=true", "model.encoder.wo_backbone_cross_attn=true"],
             ["model.encoder.wo_depth_refine=true", "model.encoder.wo_cost_volume_refine=true"],
             ["model.encoder.gaussians_per_pixel=3"]]


def original_command_line(experiment: str, test_index: Path | None = None) -> list[str]:
    """main.yaml's and the groups' keys, then the experiment's: the values `+experiment=NAME` composes to. With
    test_index, the original's test command: the evaluation sampler (whose keys replace the bounded one's)."""
    groups = [key.replace("+loss.", "loss.") for key in ORIGINAL_GROUPS]
    if test_index is None:
        return [f"+experiment={experiment}", *ORIGINAL_MAIN, *groups, *EXPERIMENT_COMMON, *EXPERIMENT[experiment]]
    groups = [key for key in groups if not key.startswith("dataset.view_sampler.")]
    return [f"+experiment={experiment}", *ORIGINAL_MAIN, *groups, *EXPERIMENT_COMMON, *EXPERIMENT[experiment],
            "mode=test", "dataset/view_sampler=evaluation", f"dataset.view_sampler.index_path={test_index}",
            "dataset.view_sampler.num_context_views=2"]


@pytest.mark.parametrize("experiment", ["re10k", "acid", "dtu"])
def test_every_original_key_composes_to_the_experiments_values(experiment):
    """Stating every key of the original explicitly gives the same config as the experiment alone."""
    explicit = compose_cfg(original_command_line(experiment))
    implicit = compose_cfg([f"+experiment={experiment}", "output_dir=null", "trainer.val_check_interval=0.5"])
    explicit.output_dir = implicit.output_dir  # time-stamped
    assert explicit == implicit
    assert explicit.trainer.val_check_interval == 0.5 and explicit.output_dir.startswith("outputs/")
    assert (explicit.data_loader.train.seed, explicit.data_loader.val.seed) == (1234, 3456)


def test_the_original_main_yaml_composes_without_an_experiment():
    """The original's bare main.yaml (max_steps -1 with cosine_lr) only fails where a schedule must be built."""
    with pytest.raises(ValueError, match="trainer.max_steps.*optimizer.cosine_lr"):
        compose_cfg(ORIGINAL_MAIN + ORIGINAL_GROUPS)
    assert compose_cfg(ORIGINAL_MAIN + ORIGINAL_GROUPS + ["mode=test", "checkpointing.load=x.ckpt"]).mode == "test"


@pytest.fixture(scope="module")
def scenes_64(tmp_path_factory) -> Path:
    """Synthetic 64 x 64 scenes with 48 frames: the bounded sampler's initial context gap of 25 fits."""
    return synthetic_dataset(tmp_path_factory, "scenes_64", train_scenes=1, test_scenes=1, frames=48, height=64,
                             width=64, seed=11)


def runnable(root: Path, tmp_path: Path, lpips: Path) -> list[str]:
    """What a CPU test cannot take from the original: data, image size, batch, workers, steps, weights."""
    return [f"dataset.roots=[{root}]", "dataset.image_shape=[64,64]", "dataset.original_image_shape=[64,64]",
            "data_loader.train.batch_size=1", "data_loader.train.num_workers=0", "data_loader.val.num_workers=0",
            "data_loader.test.num_workers=0", "trainer.max_steps=1", "trainer.accelerator=cpu",
            "train.video_frames=3", "model.encoder.unimatch_weights_path=null", f"loss.lpips.weights={lpips}",
            f"test.output_path={tmp_path / 'test'}", f"output_dir={tmp_path / 'run'}"]


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> Path:
    from lpips_test_weights import write_lpips_test_weights

    folder = tmp_path_factory.mktemp("lpips")
    write_lpips_test_weights(folder, seed=1)
    return folder


def test_the_original_re10k_command_line_trains_a_step(scenes_64, lpips_weights, tmp_path):
    """One optimizer step with sanity validation and the validation that val_check_interval=0.5 asks for (a
    1-scene split: a pass is one step), and the checkpoint at the last step."""
    result = run_train(original_command_line("re10k") + runnable(scenes_64, tmp_path, lpips_weights), cwd=tmp_path)
    assert "step 1: validation" in result.stdout + result.stderr
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "epoch_0-step_1.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1


def test_the_original_dtu_test_command_line_scores(scenes_64, lpips_weights, tmp_path):
    """The DTU test command (test_times_per_scene=4, keys <scene>_00 .. _03) on a checkpoint of the same model."""
    cfg = compose_cfg(original_command_line("dtu") + runnable(scenes_64, tmp_path, lpips_weights)
                      + ["mode=test", "checkpointing.load=unused"])
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": make_model(cfg).state_dict(), "global_step": 0}, checkpoint)
    key = json.loads((scenes_64 / "test" / "index.json").read_text()).popitem()[0]
    index = tmp_path / "index.json"
    index.write_text(json.dumps({f"{key}_{run:02d}": {"context": [2 + run, 30 + run], "target": [10 + run]}
                                 for run in range(4)}))
    run_train(original_command_line("dtu", test_index=index) + runnable(scenes_64, tmp_path, lpips_weights)
              + [f"checkpointing.load={checkpoint}"], cwd=tmp_path)
    averages = json.loads((tmp_path / "test" / "dtu" / "views2" / "scores_all_avg.json").read_text())
    assert averages["num_scored"] == 4 and averages["lpips"] is not None


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda keys: "+".join(k.split(".")[-1] for k in keys))
def test_the_original_ablation_keys_train_a_step(ablation, scenes_64, lpips_weights, tmp_path):
    cfg = compose_cfg(original_command_line("re10k") + runnable(scenes_64, tmp_path, lpips_weights) + ablation)
    torch.manual_seed(0)
    model = make_model(cfg)
    stream = TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)
    output = model(next(iter(stream)), 0)
    output.loss.backward()
    assert torch.isfinite(output.loss) and output.loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
