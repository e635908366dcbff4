"""The Hydra tree composes like the original, and bad keys stop the run naming the full key path."""

from dataclasses import dataclass

import pytest
from loop_fixtures import compose_cfg

from fabric_mvsplat.config import RootCfg, TrainerCfg, from_dict
from fabric_mvsplat.data.config import ViewSamplerBoundedCfg, ViewSamplerEvaluationCfg
from fabric_mvsplat.errors import ConfigError



def test_re10k_experiment_matches_the_original():
    cfg = compose_cfg(["+experiment=re10k"])
    assert isinstance(cfg, RootCfg) and cfg.mode == "train"
    assert cfg.trainer.max_steps == 300_001 and cfg.trainer.gradient_clip_val == 0.5
    assert cfg.data_loader.train.batch_size == 14 and cfg.data_loader.val.seed == 3456
    assert (cfg.optimizer.lr, cfg.optimizer.cosine_lr) == (2e-4, True)
    assert cfg.checkpointing.every_n_train_steps == 20000 and cfg.checkpointing.save_top_k == -1
    assert (cfg.dataset.near, cfg.dataset.far, cfg.dataset.image_shape) == (1.0, 100.0, [256, 256])
    assert cfg.dataset.make_baseline_1 is False and cfg.dataset.baseline_epsilon == 1e-3
    sampler = cfg.dataset.view_sampler
    assert isinstance(sampler, ViewSamplerBoundedCfg)
    assert (sampler.num_target_views, sampler.warm_up_steps) == (4, 150_000)
    assert (sampler.initial_min_distance_between_context_views, sampler.min_distance_between_context_views) == (25, 45)
    encoder = cfg.model.encoder
    assert (encoder.num_depth_candidates, encoder.depth_unet_feat_dim) == (128, 32)
    assert encoder.costvolume_unet_attn_res == [4] and encoder.depth_unet_channel_mult == [1, 1, 1, 1, 1]
    assert cfg.loss.mse.weight == 1.0 and cfg.loss.lpips.apply_after_step == 0 and cfg.loss.depth is None
    assert cfg.wandb["name"] == "re10k" and cfg.seed == 111123
    assert cfg.test.compute_scores is True and cfg.test.eval_time_skip_steps == 5


def test_original_test_command_line_composes():
    cfg = compose_cfg(["+experiment=dtu", "mode=test", "dataset/view_sampler=evaluation",
                       "checkpointing.load=checkpoints/re10k.ckpt", "test.compute_scores=true",
                       "dataset.view_sampler.index_path=assets/evaluation_index_dtu_nctx3.json",
                       "dataset.view_sampler.num_context_views=3"])
    assert cfg.mode == "test" and isinstance(cfg.dataset.view_sampler, ViewSamplerEvaluationCfg)
    assert cfg.dataset.view_sampler.num_context_views == 3
    assert (cfg.dataset.near, cfg.dataset.far, cfg.dataset.test_times_per_scene) == (2.125, 4.525, 4)
    # Without an explicit index the overlay picks the RE10K index, as in the original.
    plain = compose_cfg(["+experiment=acid", "mode=test", "dataset/view_sampler=evaluation", "checkpointing.load=x"])
    assert plain.dataset.view_sampler.index_path == "assets/evaluation_index_re10k.json"
    assert plain.dataset.roots == ["datasets/acid"]


@pytest.mark.parametrize("override, key", [
    ("trainer.max_steps=-5", "trainer.max_steps"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("trainer.max_steps=true", "trainer.max_steps"),
    ("+trainer.max_stepz=3", "trainer.max_stepz"),
    ("+model.encoder.gaussian_adapter.colour=1", "model.encoder.gaussian_adapter.colour"),
    ("checkpointing.save_top_k=0", "checkpointing.save_top_k"),
    ("checkpointing.every_n_train_steps=0", "checkpointing.every_n_train_steps"),
    ("data_loader.train.batch_size=0", "data_loader.train.batch_size"),
    ("dataset.view_sampler.name=foo", "dataset.view_sampler.name"),
    ("dataset.roots=[1]", "dataset.roots[0]"),
    ("model.encoder.gaussian_adapter.sh_degree=7", "model.encoder.gaussian_adapter.sh_degree"),
    ("trainer.precision=bf16", "trainer.precision"),
    ("trainer.profile={start:-1,steps:2}", "trainer.profile.start"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("mode=eval", "mode"),
])
def test_bad_values_name_the_full_key(override, key):
    with pytest.raises(ConfigError) as error:
        compose_cfg(["+experiment=re10k", override])
    assert error.value.key == key
    assert f"'{key}'" in str(error.value) and "expected" in str(error.value)


def test_val_check_interval_takes_the_originals_fraction_steps_or_null():
    assert compose_cfg(["+experiment=re10k"]).trainer.val_check_interval == 0.5  # main.yaml, as the original
    assert compose_cfg(["+experiment=re10k", "trainer.val_check_interval=1.0"]).trainer.val_check_interval == 1.0
    assert compose_cfg(["+experiment=re10k", "trainer.val_check_interval=250"]).trainer.val_check_interval == 250
    assert compose_cfg(["+experiment=re10k", "trainer.val_check_interval=null"]).trainer.val_check_interval is None
    for bad in ("1.5", "0.0", "0", "-0.5"):
        with pytest.raises(ConfigError, match="fraction") as error:
            compose_cfg(["+experiment=re10k", f"trainer.val_check_interval={bad}"])
        assert error.value.key == "trainer.val_check_interval"


def test_loader_seed_null_is_accepted_as_in_the_original():
    cfg = compose_cfg(["+experiment=re10k", "data_loader.train.seed=null", "data_loader.val.seed=null",
                       "data_loader.test.seed=null"])
    assert (cfg.data_loader.train.seed, cfg.data_loader.val.seed, cfg.data_loader.test.seed) == (None, None, None)


def test_cross_key_checks():
    with pytest.raises(ConfigError) as error:  # one-cycle needs a step count: both keys and both fixes named
        compose_cfg([])
    assert error.value.key == "trainer.max_steps"
    assert "optimizer.cosine_lr=true" in str(error.value) and "optimizer.cosine_lr=false" in str(error.value)
    with pytest.raises(ConfigError) as error:
        compose_cfg(["+experiment=re10k", "mode=test"])
    assert error.value.key == "checkpointing.load"
    assert compose_cfg(["optimizer.cosine_lr=false"]).trainer.max_steps == -1


def test_converter_types_and_defaults():
    @dataclass
    class Node:
        trainer: TrainerCfg
        ratio: float = 1.0
        names: list[str] | None = None

    node = from_dict(Node, {"trainer": {"devices": 2, "profile": {"start": 3}}, "ratio": 2})
    assert node.ratio == 2.0 and isinstance(node.ratio, float) and node.names is None
    assert node.trainer.devices == 2 and node.trainer.profile.start == 3 and node.trainer.profile.steps == 5
    with pytest.raises(ConfigError) as error:
        from_dict(Node, {"trainer": {"devices": "two"}})
    assert error.value.key == "trainer.devices"
    with pytest.raises(ConfigError) as error:
        from_dict(Node, {"ratio": 1.0})
    assert error.value.key == "trainer" and "missing" in str(error.value)
    with pytest.raises(ConfigError) as error:
        from_dict(Node, {"trainer": {}, "names": ["a", 3]})
    assert error.value.key == "names[1]"
