"""Every default is written once in effect: the value a key gets from the YAML tree (main.yaml and the group
options it selects) is the default of its typed dataclass field, so a config built in code (tests, the
inference API) and one composed by Hydra mean the same run.

Choices that are not defaults are left out on purpose: the dataset files other than re10k, the dataset-specific
view-sampler overlay and the experiments (they tune the run for a dataset), `output_dir` (a time-stamped folder)
and `wandb` (free-form)."""

import dataclasses
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fabric_mvsplat.config import load_config
from fabric_mvsplat.train import CONFIG_DIR

NOT_DEFAULTS = {"output_dir", "wandb"}


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def disagreements(built: Any, default: Any, yaml: dict, path: str = "") -> list[str]:
    """Walk the built config beside its default instance (None where the field has no default) and the YAML."""
    found = []
    for field in dataclasses.fields(built):
        key = f"{path}.{field.name}" if path else field.name
        if key in NOT_DEFAULTS or field.name not in yaml:
            continue
        value = getattr(built, field.name)
        expected = getattr(default, field.name) if default is not None else field_default(field)
        if dataclasses.is_dataclass(value):
            if expected is dataclasses.MISSING or type(expected) is not type(value):
                expected = None  # no default instance: its own fields' defaults apply
            found += disagreements(value, expected, yaml[field.name], key)
        elif expected is dataclasses.MISSING:
            found.append(f"{key}: only the YAML has a value ({yaml[field.name]!r}); give the field that default")
        elif expected != yaml[field.name]:
            found.append(f"{key}: YAML {yaml[field.name]!r}, dataclass {expected!r}")
    return found


def composed(*overrides: str) -> tuple[Any, dict]:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        dict_config = compose("main", overrides=["~dataset/view_sampler_dataset_specific_config", *overrides])
    return load_config(dict_config), OmegaConf.to_container(dict_config, resolve=True)


def test_the_yaml_tree_and_the_dataclasses_hold_the_same_defaults():
    # max_steps: main.yaml's -1 (no limit) is refused together with the cosine schedule; compared below.
    cfg, yaml = composed("trainer.max_steps=5")
    yaml["trainer"]["max_steps"] = -1
    found = disagreements(cfg, None, yaml)
    assert not found, "defaults written twice with different values:\n" + "\n".join(found)


def test_every_view_sampler_and_loss_option_agrees_too():
    """Their group files mirror one dataclass each (dataset files are per-dataset choices: DatasetCfg holds re10k's)."""
    for overrides in (["dataset/view_sampler=arbitrary"], ["dataset/view_sampler=all"], ["loss=[mse,lpips,depth,ssim]"]):
        cfg, yaml = composed("trainer.max_steps=5", *overrides)
        yaml["trainer"]["max_steps"] = -1
        found = disagreements(cfg, None, yaml)
        assert not found, f"{overrides}: defaults written twice with different values:\n" + "\n".join(found)


def test_a_changed_default_is_noticed():
    """The walk must see a value that differs from its field's default."""
    cfg, yaml = composed("trainer.max_steps=5")
    yaml["trainer"]["max_steps"] = -1
    yaml["checkpointing"]["every_n_train_steps"] = 123
    assert disagreements(cfg, None, yaml) == ["checkpointing.every_n_train_steps: YAML 123, dataclass 20000"]
