"""Every user mistake stops at start-up, before any output, with one line naming key or file, value and fix.

The combinations and files are checked by `config.check_before_work` (called once by `train.main`), the
configs come from Hydra's own composition, and the command-line cases run the real entry point.
"""

import re
import warnings

import pytest
from conftest import run_train
from hydra import compose, initialize_config_dir
from data_fixtures import make_split
from lpips_test_weights import write_lpips_test_weights

from fabric_mvsplat.config import check_before_work, load_config
from fabric_mvsplat.errors import ConfigError, MissingFilesError, MissingWeightsError, UserError
from fabric_mvsplat.train import CONFIG_DIR

# +experiment=re10k without the two weight files a user may not have (each has its own case below).
RE10K_WITHOUT_WEIGHTS = ["+experiment=re10k", "~loss.lpips", "model.encoder.unimatch_weights_path=null"]


@pytest.fixture(scope="module")
def folder_with_re10k_chunks(tmp_path_factory):
    """A working directory where +experiment=re10k's dataset.roots (datasets/re10k) holds a few chunks."""
    folder = tmp_path_factory.mktemp("run_from")
    for stage in ("train", "test"):
        make_split(folder / "datasets" / "re10k" / stage, 2, num_frames=4)
    return folder


@pytest.fixture(autouse=True)
def run_where_the_dataset_is(folder_with_re10k_chunks, monkeypatch):
    """check_before_work checks the dataset's chunks too; the command-line tests pass their own cwd."""
    monkeypatch.chdir(folder_with_re10k_chunks)


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
    """Each is reported before any work; missing files come all at once (the re10k dataset is absent here too)."""
    cfg = composed(overrides)
    with pytest.raises(UserError) as error:
        check_before_work(cfg)
    problems = error.value.problems if isinstance(error.value, MissingFilesError) else [error.value]
    assert key in [getattr(problem, "key", None) for problem in problems], str(error.value)
    assert all("\n" not in str(problem) for problem in problems)


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
    (["+experiment=re10k", "dataset/view_sampler=arbitrary", "dataset.view_sampler.num_context_views=1"],
     "dataset.view_sampler.num_context_views"),  # a config error, checked before the files
    ([*RE10K_WITHOUT_WEIGHTS, "dataset.roots=[nowhere]", "output_dir=run"], "nowhere"),  # a dataset error
])
def test_a_failing_command_writes_nothing(tmp_path, args, named):
    result = run_train(args, tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabric_mvsplat: ") and named in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # neither outputs/<date>/<time>, nor output_dir, nor a log


@pytest.mark.parametrize("args, suggestion", [
    (["+experiment=re10K"], "did you mean +experiment=re10k?"),  # a config group option that does not exist
    (["+experiment=demo", "trainer.max_step=10"], "did you mean trainer.max_steps?"),  # an unknown key
    (["+experiment=demo", "+trainer.max_step=10"], "did you mean 'trainer.max_steps'?"),  # Hydra's advice, followed
    (["+experiment=demo", "trainer.max_steps", "10"], "did you mean trainer.max_steps=VALUE?"),  # override syntax
    (["+experiment=demo", "trainer.max_steps==10"], "write key=value"),
    (["experiment=demo"], "add it with +experiment=demo"),  # a group main.yaml does not select
])
def test_hydra_mistakes_end_in_one_line_with_the_closest_names(tmp_path, args, suggestion):
    result = run_train(args, tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabric_mvsplat: ") and suggestion in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>, no log


def test_hydra_mistakes_name_the_options_of_your_own_config_folder(tmp_path):
    """Groups extended with hydra.searchpath (docs/configuration.md, your own config folders) are offered too."""
    from fabric_mvsplat.config.command_line import check_overrides
    from fabric_mvsplat.errors import CommandLineError

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 3\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    check_overrides(CONFIG_DIR, [searchpath, "+experiment=mine"])
    with pytest.raises(CommandLineError, match=r"did you mean \+experiment=mine\? \(options in 'experiment': "
                                               r"acid, demo, dtu, mine, re10k\)"):
        check_overrides(CONFIG_DIR, [searchpath, "+experiment=mien"])


def test_every_missing_file_is_named_in_one_message(tmp_path):
    """+experiment=re10k in an empty folder lacks the LPIPS weights, the UniMatch weights and the dataset: one run
    names them all, each with its fix, exit code 2, nothing written."""
    result = run_train(["+experiment=re10k"], tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip()
    assert message.startswith("fabric_mvsplat: 3 files or folders this run needs are missing"), message
    for named in ("loss.lpips.weights", "add ~loss.lpips", "model.encoder.unimatch_weights_path",
                  "UniMatch model zoo", "dataset root 'datasets/re10k' does not exist", "datasets/re10k/train",
                  "datasets/re10k/test", "docs/data.md"):
        assert named in message, named
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_names_the_checkpoints_beside_it(tmp_path):
    run = tmp_path / "checkpoints"
    run.mkdir()
    for name in ("step_000100.ckpt", "step_000200.ckpt"):
        (run / name).write_bytes(b"")
    cfg = composed([*RE10K_WITHOUT_WEIGHTS, "mode=test", f"checkpointing.load={run / 'step_300.ckpt'}"])
    with pytest.raises(UserError, match=r"holds step_000100.ckpt, step_000200.ckpt"):
        check_before_work(cfg)
