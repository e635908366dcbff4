"""A dataset decides no path: scene keys that are absolute paths, climb with '..', hold a NUL byte, are very long
or are names Windows reserves become safe file names in the data layer, test mode writes only inside its output
folder, and the mapping is recorded beside the results."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from fabric_mvsplat.data import TestLoader
from fabric_mvsplat.data.chunk_io import write_chunks
from fabric_mvsplat.data.scene_names import MAX_NAME_LENGTH, scene_file_name
from fabric_mvsplat.evaluation.test_mode import run_test
from loop_fixtures import compose_cfg
from data_fixtures import make_scene

TINY_MODEL = ["model.encoder.d_feature=32", "model.encoder.num_depth_candidates=8",
              "model.encoder.costvolume_unet_feat_dim=32", "model.encoder.gradient_checkpointing=false"]


def hostile_keys(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "escaped_absolute"), "../../escaped_up", "a/../../../escaped_middle", "x\0y",
            "k" * 300, "CON", "nul.txt", "com1", ".", "..", "", "back\\slash", "plain_scene-01"]


def test_plain_keys_are_kept_and_every_other_key_becomes_one_safe_component(tmp_path):
    keys = hostile_keys(tmp_path)
    names = [scene_file_name(key) for key in keys]
    assert names[-1] == "plain_scene-01"  # the original's layout for ordinary keys
    assert len(set(names)) == len(keys)  # no two scenes share files
    for key, name in zip(keys[:-1], names[:-1]):
        assert name != key and "~" in name, key
        assert name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name
        assert len(name) <= MAX_NAME_LENGTH and name.isascii()
        assert name.endswith(hashlib.sha256(key.encode()).hexdigest()[:16])  # the same key, the same name
        assert (tmp_path / name).parent == tmp_path
    assert scene_file_name("scene~0123456789abcdef") != "scene~0123456789abcdef"  # no kept key looks mapped


def snapshot(root: Path, leave_out: Path) -> dict[str, bytes]:
    """Every file and folder under `root` except `leave_out`, with its bytes."""
    return {str(path.relative_to(root)): path.read_bytes() if path.is_file() else b"<dir>"
            for path in sorted(root.rglob("*")) if leave_out not in (path, *path.parents)}


def test_test_mode_writes_nothing_outside_its_folder_whatever_the_keys(tmp_path):
    """Images, videos and Gaussians of scenes with hostile keys, rendered by the real model in test mode."""
    keys = hostile_keys(tmp_path)
    data = tmp_path / "data"
    write_chunks([make_scene(key, 12, 32, 32, seed=i) for i, key in enumerate(keys)], data / "test")
    index = data / "evaluation_index.json"
    index.write_text(json.dumps({key: {"context": [0, 6], "target": [3]} for key in keys}))
    out = tmp_path / "work" / "out"  # test.output_path; the results go to out/demo
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "beside.txt").write_text("a file beside the output folder")
    cfg = compose_cfg(["+experiment=demo", f"dataset.roots=[{data}]", "dataset.image_shape=[32,32]", *TINY_MODEL,
                       "mode=test", "dataset/view_sampler=evaluation", f"dataset.view_sampler.index_path={index}",
                       f"test.output_path={out}", "checkpointing.load=unused.ckpt", "test.save_image=true",
                       "test.save_video=true", "test.save_gaussians=true", "test.compute_scores=true"])
    before = snapshot(tmp_path, out)

    from lightning_fabric import Fabric

    from fabric_mvsplat.build import make_model

    torch.manual_seed(0)
    averages = run_test(Fabric(accelerator="cpu", devices=1), cfg, make_model(cfg),
                        TestLoader(cfg.dataset, cfg.data_loader.test, 0, 1))

    assert averages["num_rendered"] == len(keys)
    assert snapshot(tmp_path, out) == before  # not one byte outside the output folder changed
    assert not (tmp_path / "escaped_absolute").exists() and not (tmp_path / "escaped_up").exists()
    results = out / "demo"
    recorded = json.loads((results / "scene_file_names.json").read_text())
    assert recorded == {key: scene_file_name(key) for key in keys}
    for key in keys:
        name = recorded[key]
        assert (results / name / "color" / "000003.png").is_file(), key
        assert (results / "gaussians" / f"{name}.ply").is_file(), key
        assert (results / "video" / f"{name}_frame_0_6.mp4").is_file(), key
    # The scores keep the dataset's keys: they are data, not paths.
    assert sorted(s["scene"] for s in json.loads((results / "scores_per_scene.json").read_text())) == sorted(keys)


def test_a_wandb_name_that_leaves_test_output_path_is_refused():
    from fabric_mvsplat.config import check_before_work
    from fabric_mvsplat.errors import ConfigError

    for name in ("../elsewhere", "/absolute/place"):
        cfg = compose_cfg(["+experiment=demo", "mode=test", f"wandb.name='{name}'", "checkpointing.load=x.ckpt"])
        with pytest.raises(ConfigError, match="wandb.name"):
            check_before_work(cfg)
