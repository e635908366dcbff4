"""Every user mistake stops at start-up, before any output, with one line naming key or file, value and fix.

The combinations and files are checked by `config.check_before_work` (called once by `train.main`), the
configs come from Hydra's own composition, and the command-line cases run the real entry point.
"""

import re
import warnings

import pytest
from conftest import run_train
from hydra import compose, initialize_config_dir
from lpips_test_weights import write_lpips_test_weights

from fabric_mvsplat.config import check_before_work, load_config
from fabric_mvsplat.errors import ConfigError, MissingWeightsError, UserError
from fabric_mvsplat.train import CONFIG_DIR

# +experiment=re10k without the two weight files a user may not have (each has its own case below).
RE10K_WITHOUT_WEIGHTS = ["+experiment=re10k", "~loss.lpips", "model.encoder.unimatch_weights_path=null"]


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return load_config(compose("main", overrides=overrides))


@pytest.mark.parametrize("overrides, key", [
    (["+experiment=re10k"], "loss.lpips.weights"),
    (["+experiment=re10k", "~loss.lpips"], "model.encoder.unimatch_weights_path"),
    ([*RE10K_WITHOUT_WEIGHTS, "loss=[mse,depth]"], "train.depth_mode"),
    ([*RE10K_WITHOUT_WEIGHTS, "~loss.mse"], "loss"),
    ([*RE10K_WITHOUT_WEIGHTS, "model.decoder.backend=gsplat", "trainer.accelerator=cpu"], "model.decoder.backend"),
    ([*RE10K_WITHOUT_WEIGHTS, "mode=test", "dataset/view_sampler=evaluation",
      "dataset.view_sampler.index_path=/nowhere/index.json", "checkpointing.load=latest"],
     "dataset.view_sampler.index_path"),
    ([*RE10K_WITHOUT_WEIGHTS, "checkpointing.load=/nowhere/step_5.ckpt"], "checkpointing.load"),
    ([*RE10K_WITHOUT_WEIGHTS, "mode=test", "checkpointing.load=/nowhere/step_5.ckpt"], "checkpointing.load"),
])
def test_late_failures_are_config_errors_at_start_up(overrides, key):
    cfg = composed(overrides)
    with pytest.raises(ConfigError) as error:
        check_before_work(cfg)
    assert error.value.key == key
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)


@pytest.mark.parametrize("sampler", ["bounded", "arbitrary", "evaluation"])
def test_fewer_than_two_context_views_stop_at_start_up(sampler):
    """One rule, checked once in the data config, for every sampler that picks context views."""
    with pytest.raises(ConfigError) as error:
        composed([*RE10K_WITHOUT_WEIGHTS, f"dataset/view_sampler={sampler}", "dataset.view_sampler.num_context_views=1"])
    assert error.value.key == "dataset.view_sampler.num_context_views"
    assert "at least 2" in str(error.value) and "\n" not in str(error.value)


def test_a_valid_config_passes_and_latest_counts_as_a_checkpoint():
    check_before_work(composed(RE10K_WITHOUT_WEIGHTS))
    check_before_work(composed([*RE10K_WITHOUT_WEIGHTS, "checkpointing.load=latest"]))


def test_the_advice_for_dropping_lpips_works_under_the_experiment():
    """The message's fix, applied through Hydra, gives a run that trains with MSE only."""
    with pytest.raises(ConfigError) as error:
        check_before_work(composed(["+experiment=re10k", "model.encoder.unimatch_weights_path=null"]))
    advice = re.search(r"add (\S+) to the command line", str(error.value)).group(1)
    cfg = composed(["+experiment=re10k", "model.encoder.unimatch_weights_path=null", advice])
    check_before_work(cfg)
    assert cfg.loss.lpips is None and cfg.loss.mse is not None


def test_lpips_weight_files_are_checked_at_start_up(tmp_path):
    with pytest.raises(MissingWeightsError, match=re.escape(str(tmp_path / "vgg16.pth"))):
        check_before_work(composed([*RE10K_WITHOUT_WEIGHTS, f"test.lpips_weights={tmp_path}"]))
    write_lpips_test_weights(tmp_path, seed=0)
    check_before_work(composed(["+experiment=re10k", "model.encoder.unimatch_weights_path=null",
                                f"loss.lpips.weights={tmp_path}"]))


def test_keys_without_effect_warn_once_when_set():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        composed(RE10K_WITHOUT_WEIGHTS)
    assert not [w for w in caught if "has no effect" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        composed([*RE10K_WITHOUT_WEIGHTS, "train.extended_visualization=true", "data_loader.val.num_workers=4",
                  "checkpointing.pretrained_model=x.ckpt", "model.encoder.visualizer.num_samples=2"])
    messages = [str(w.message) for w in caught if "has no effect" in str(w.message)]
    assert len(messages) == 4
    for key in ("train.extended_visualization", "data_loader.val.num_workers", "checkpointing.pretrained_model",
                "model.encoder.visualizer"):
        assert sum(key in message for message in messages) == 1


# ------------------------------------------------------------------------------- the real command line
def test_help_shows_the_projects_usage(tmp_path):
    result = run_train(["--help"], tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    for command in ("+experiment=demo", "checkpointing.load=", "mode=test", "checkpointing.resume=false",
                    "README.md", "torchrun"):
        assert command in result.stdout
    assert "powered by Hydra" not in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, named", [
    (["+experiment=re10k"], "loss.lpips.weights"),  # a config error, default output_dir
    ([*RE10K_WITHOUT_WEIGHTS, "dataset.roots=[nowhere]", "output_dir=run"], "nowhere"),  # a dataset error
])
def test_a_failing_command_writes_nothing(tmp_path, args, named):
    result = run_train(args, tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabric_mvsplat: ") and named in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # neither outputs/<date>/<time>, nor output_dir, nor a log
