"""Scenes whose cameras are non-finite or degenerate are rejected when read: skipped, warned about by name and
counted in data/skipped_scenes like a corrupt chunk, never a crash or NaN poses in a batch."""

import json
import warnings
from itertools import islice

import numpy as np
import pytest
import torch

from fabric_mvsplat.data import StepTracker, TrainStream
from fabric_mvsplat.data.chunk_io import camera_problem, vector_to_cameras
from fabric_mvsplat.data.config import DataLoaderStageCfg
from data_fixtures import dataset_cfg, make_scene, make_split


def edited(key: str, seed: int, view: int, edit) -> dict:
    """A good scene whose view `view` has its [18] camera vector changed in place by `edit`."""
    scene = make_scene(key, 12, 18, 32, seed=seed)
    cameras = scene["cameras"].clone()
    edit(cameras[view], cameras[view, 6:].view(3, 4))  # (fx fy cx cy 0 0 ..., the 3x4 world-to-camera)
    return {**scene, "cameras": cameras}


def bad_scenes() -> dict[str, dict]:
    def set_at(index, value):
        return lambda vector, w2c: vector.__setitem__(index, value)

    def copy_row_0_to_row_2(vector, w2c):  # two equal rows: det 0
        w2c[2, :3] = w2c[0, :3]

    def scale_by_2(vector, w2c):
        w2c[:, :3] *= 2

    def negate_row_0(vector, w2c):  # a mirror: det -1
        w2c[0] *= -1

    edits = {"nan_camera": (3, set_at(9, float("nan"))), "inf_focal": (0, set_at(0, float("inf"))),
             "zero_focal": (5, set_at(1, 0.0)), "negative_focal": (2, set_at(0, -0.8)),
             "singular_rotation": (7, copy_row_0_to_row_2), "scaled_rotation": (1, scale_by_2),
             "mirrored_rotation": (4, negate_row_0)}
    return {key: edited(key, 10 + i, view, edit) for i, (key, (view, edit)) in enumerate(edits.items())}


def test_each_degenerate_camera_is_named():
    good = make_scene("good", 12, 18, 32, seed=0)["cameras"]
    assert camera_problem(good) is None
    problems = {key: camera_problem(scene["cameras"]) for key, scene in bad_scenes().items()}
    assert "view 3 has non-finite" in problems["nan_camera"]
    assert "view 0 has non-finite" in problems["inf_focal"]
    assert "view 5 has focal length" in problems["zero_focal"] and "view 2 has focal" in problems["negative_focal"]
    for key, view in (("singular_rotation", 7), ("scaled_rotation", 1), ("mirrored_rotation", 4)):
        assert f"view {view}'s world-to-camera rotation is not a rotation" in problems[key]
    # numpy's own verdict on what the reader would otherwise do with them: crash, or NaN poses
    with pytest.raises(np.linalg.LinAlgError):
        vector_to_cameras(bad_scenes()["singular_rotation"]["cameras"])
    assert vector_to_cameras(bad_scenes()["nan_camera"]["cameras"])[0].isnan().any()


def test_random_rotations_in_float32_pass():
    generator = torch.Generator().manual_seed(0)
    q, r = torch.linalg.qr(torch.randn(64, 3, 3, generator=generator, dtype=torch.float64))
    rotation = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    rotation[torch.det(rotation) < 0, :, 0] *= -1  # proper rotations only
    w2c = torch.cat([rotation, torch.randn(64, 3, 1, generator=generator, dtype=torch.float64)], dim=2)
    intrinsics = torch.tensor([[0.9, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1]], dtype=torch.float64).repeat(64, 1, 1)
    from fabric_mvsplat.data.chunk_io import cameras_to_vector

    assert camera_problem(cameras_to_vector(w2c, intrinsics)) is None


def test_nan_and_singular_cameras_are_skipped_counted_and_named(tmp_path):
    stage = tmp_path / "train"
    good = make_split(stage, 4, scenes_per_chunk=2)
    scenes = bad_scenes()
    torch.save(list(scenes.values()), stage / "000010.torch")
    index = json.loads((stage / "index.json").read_text())
    index.update({key: "000010.torch" for key in scenes})
    (stage / "index.json").write_text(json.dumps(index))

    stream = TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(num_workers=0), StepTracker(), 0, 1, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yielded = [batch for batch in islice(stream, 8)]  # two passes over the 4 good scenes
    assert sorted(batch["scene"][0] for batch in yielded) == sorted(good * 2)
    for batch in yielded:
        for side in ("context", "target"):
            assert torch.isfinite(batch[side]["extrinsics"]).all() and torch.isfinite(batch[side]["intrinsics"]).all()
    assert stream.skip_counts == {"invalid_cameras": 2 * len(scenes)}
    assert stream.skipped_scenes == 2 * len(scenes)  # the data/skipped_scenes scalar
    messages = "\n".join(str(w.message) for w in caught)
    for key in scenes:
        assert f"invalid_cameras: {stage / '000010.torch'}: scene {key!r}" in messages
