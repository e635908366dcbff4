"""A real package: the wheel carries the Hydra configs and the console script, the entry point finds its configs
from any directory, and users add experiments and datasets through Hydra's search path."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fabric_mvsplat.config import load_config
from fabric_mvsplat.train import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]

USER_DATASET = """\
defaults:
  - synthetic
  - _self_

roots: [datasets/mine]
synthetic_if_missing: null
near: 0.5
far: 30.
"""
USER_EXPERIMENT = """\
# @package _global_
defaults:
  - demo
  - override /dataset: mine

output_dir: outputs/mine
trainer:
  max_steps: 1234
"""


@pytest.fixture
def user_configs(tmp_path) -> Path:
    folder = tmp_path / "my_configs"
    (folder / "dataset").mkdir(parents=True)
    (folder / "experiment").mkdir()
    (folder / "dataset" / "mine.yaml").write_text(USER_DATASET)
    (folder / "experiment" / "mine.yaml").write_text(USER_EXPERIMENT)
    return folder


def test_user_experiment_through_the_search_path(user_configs):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = load_config(compose("main", overrides=[f"hydra.searchpath=[file://{user_configs}]", "+experiment=mine"]))
    assert cfg.dataset.roots == ["datasets/mine"] and (cfg.dataset.near, cfg.dataset.far) == (0.5, 30.0)
    assert cfg.dataset.synthetic_if_missing is None
    assert cfg.trainer.max_steps == 1234 and cfg.output_dir == "outputs/mine"
    assert cfg.model.encoder.d_feature == 64  # the rest comes from the package's demo experiment


def test_entry_point_from_another_directory_with_config_dir(user_configs, tmp_path):
    """`--config-dir` on the command line, run where no config/ folder exists."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-m", "fabric_mvsplat.train", "--config-dir", str(user_configs),
                             "+experiment=mine", "--cfg", "job"], cwd=elsewhere, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max_steps: 1234" in result.stdout and "- datasets/mine" in result.stdout


def test_wheel_holds_configs_and_console_script(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment (needed to build the wheel without network)")
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "fabric_mvsplat", source / "fabric_mvsplat", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("fabric_mvsplat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(REPO)) for p in (REPO / "fabric_mvsplat" / "configs").rglob("*.yaml")}
    assert "fabric_mvsplat/configs/experiment/demo.yaml" in configs
    assert configs <= names, sorted(configs - names)
    assert "fabric_mvsplat/model/decoder/csrc/rasterize_cpu.cpp" in names  # built on first use from the install
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "fabric-mvsplat-train = fabric_mvsplat.train:main" in text
    assert "fabric-mvsplat-render = fabric_mvsplat.render:main" in text
    assert "fabric-mvsplat-view = fabric_mvsplat.view:main" in text
