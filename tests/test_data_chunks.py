"""Chunk format round trip and the dataset's conventions (cameras, crop shim, baseline, filters)."""

import json
from itertools import islice

import pytest
import torch

from fabric_mvsplat.errors import UnusableDataError
from fabric_mvsplat.data import StepTracker, check_dataset_roots, TrainStream, read_chunk
from fabric_mvsplat.data.chunk_io import cameras_to_vector, decode_image, encode_image, vector_to_cameras, write_chunks
from fabric_mvsplat.data.config import DataLoaderStageCfg
from fabric_mvsplat.camera import crop_intrinsics, field_of_view
from fabric_mvsplat.data.shims import scaled_shape
from data_fixtures import POINT, dataset_cfg, make_scene, make_split, project, scene_cameras


def test_chunk_round_trip_keeps_format_and_index(tmp_path):
    keys = make_split(tmp_path / "train", 7, scenes_per_chunk=3)
    index = json.loads((tmp_path / "train" / "index.json").read_text())
    assert sorted(index) == keys
    assert sorted(set(index.values())) == ["000000.torch", "000001.torch", "000002.torch"]
    chunk = read_chunk(tmp_path / "train" / "000001.torch")
    assert [scene["key"] for scene in chunk] == keys[3:6]
    scene = chunk[0]
    assert scene["cameras"].dtype == torch.float32 and scene["cameras"].shape == (12, 18)
    assert scene["timestamps"].dtype == torch.int64
    assert all(image.dtype == torch.uint8 and image.ndim == 1 for image in scene["images"])
    assert bytes(scene["images"][0][:4].tolist()) == b"\x89PNG"
    w2c, k = scene_cameras(12, 18, 32)
    c2w, k_read = vector_to_cameras(scene["cameras"])
    torch.testing.assert_close(c2w.double(), w2c.inverse(), atol=1e-5, rtol=0)
    torch.testing.assert_close(k_read.double(), k, atol=1e-6, rtol=0)
    assert scene["cameras"][0, 4:6].abs().sum() == 0  # the two unused distortion slots


def test_cameras_vector_layout():
    w2c = torch.arange(12.0).reshape(1, 3, 4)
    k = torch.tensor([[[0.9, 0, 0.45], [0, 1.6, 0.55], [0, 0, 1]]])
    vector = cameras_to_vector(w2c, k)
    torch.testing.assert_close(vector[0, :6], torch.tensor([0.9, 1.6, 0.45, 0.55, 0, 0]))
    torch.testing.assert_close(vector[0, 6:], torch.arange(12.0))
    with pytest.raises(ValueError, match="cameras_to_vector"):
        cameras_to_vector(torch.zeros(2, 3, 3), k)


def test_jpeg_encoding_decodes_to_same_size():
    image = (torch.rand(20, 30, 3) * 255).to(torch.uint8)
    data = encode_image(image, "jpeg", quality=90)
    assert bytes(data[:2].tolist()) == b"\xff\xd8"
    assert decode_image(data).shape == (3, 20, 30)


def test_crop_shim_matches_original_numbers():
    assert scaled_shape((360, 640), (256, 256)) == (256, 455)
    k = torch.tensor([[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1]])
    cropped = crop_intrinsics(k, (256, 455), (256, 256))
    assert cropped[0, 0] == pytest.approx(0.8 * 455 / 256) and cropped[1, 1] == pytest.approx(1.4)
    assert cropped[0, 2] == 0.5 and cropped[1, 2] == 0.5  # the original leaves cx, cy as they are
    fov = field_of_view(torch.tensor([[[0.5, 0, 0.5], [0, 0.5, 0.5], [0, 0, 1]]])).rad2deg()
    torch.testing.assert_close(fov, torch.tensor([[90.0, 90.0]]))


def blob_centre(image: torch.Tensor) -> torch.Tensor:
    """Normalised (u, v) of the bright blob in [3, H, W]: weighted centroid of pixels near the maximum."""
    intensity = image.mean(0)
    weight = (intensity - intensity.max() * 0.6).clamp(min=0)
    h, w = intensity.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([(weight * xs).sum() / weight.sum() / w, (weight * ys).sum() / weight.sum() / h])


def test_world_point_projects_onto_the_same_feature_in_every_view(tmp_path):
    """Round trip chunks -> batch: batch extrinsics (c2w, OpenCV) and normalised intrinsics project a world
    point to where the images show it, after baseline scaling, flip augmentation and the crop shim."""
    make_split(tmp_path / "train", 4, height=45, width=80)
    cfg = dataset_cfg(tmp_path, height=45, width=80, image_shape=(32, 32))
    stream = TrainStream(cfg, DataLoaderStageCfg(batch_size=2), StepTracker(), 0, 1, seed=5)
    reflect = torch.diag(torch.tensor([-1.0, 1, 1]))
    flips = []
    for batch in islice(stream, 4):
        for b in range(2):
            for side in ("context", "target"):
                views = batch[side]
                c2w, k = views["extrinsics"][b].double(), views["intrinsics"][b]
                baseline = (batch["context"]["extrinsics"][b, 0, :3, 3] - batch["context"]["extrinsics"][b, 1, :3, 3])
                assert baseline.norm() == pytest.approx(1.0, abs=1e-5)  # make_baseline_1
                scale = (views["far"][b, 0] / 100.0).item()  # far = 100 / scale (baseline_scale_bounds)
                point = POINT * scale
                found = torch.stack([blob_centre(image) for image in views["image"][b]]).double()
                errors = {flip: ((project(reflect.double() @ point if flip else point, c2w.inverse(), k)
                                  - found) * 32).norm(dim=-1).max() for flip in (False, True)}
                flip = min(errors, key=errors.get)
                assert errors[flip] < 1.0, errors  # within a pixel (the crop keeps cx: half-pixel offset)
                flips.append(flip)
    assert set(flips) == {False, True}  # both augmentation branches were exercised


def test_check_dataset_roots_errors_name_the_root(tmp_path):
    cfg = dataset_cfg(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        check_dataset_roots(cfg, "train")
    make_split(tmp_path / "data" / "train", 3, scenes_per_chunk=1)
    (tmp_path / "data" / "train" / "000002.torch").unlink()
    with pytest.raises(FileNotFoundError, match="missing chunk files.*000002.torch"):
        check_dataset_roots(dataset_cfg(tmp_path / "data"), "train")
    with pytest.raises(FileNotFoundError, match="no chunks"):
        check_dataset_roots(dataset_cfg(tmp_path / "data"), "test")


def test_wrong_frame_shape_everywhere_is_an_error_naming_the_filter(tmp_path):
    make_split(tmp_path / "train", 3)
    cfg = dataset_cfg(tmp_path, height=360, width=640)  # frames are 18x32: skip_bad_shape rejects all
    stream = TrainStream(cfg, DataLoaderStageCfg(), StepTracker(), 0, 1, seed=0)
    with pytest.raises(UnusableDataError, match="bad_shape.*original_image_shape"):
        next(iter(stream))
    cfg = dataset_cfg(tmp_path, height=360, width=640, skip_bad_shape=False)
    batch = next(iter(TrainStream(cfg, DataLoaderStageCfg(), StepTracker(), 0, 1, seed=0)))
    assert batch["context"]["image"].shape == (1, 2, 3, 16, 16)


def test_max_fov_filter(tmp_path):
    write_chunks([make_scene("wide", 12, 18, 32, seed=0)], tmp_path / "train")
    cfg = dataset_cfg(tmp_path, max_fov=40.0)  # the scene's horizontal fov is 64 degrees
    with pytest.raises(UnusableDataError, match="max_fov"):
        next(iter(TrainStream(cfg, DataLoaderStageCfg(), StepTracker(), 0, 1, seed=0)))
