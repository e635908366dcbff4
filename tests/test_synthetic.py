"""Synthetic scenes: chunk format, determinism, multi-view geometry, evaluation index."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fabric_mvsplat.data.chunk_io import decode_image, read_chunk, vector_to_cameras
from fabric_mvsplat.data.synthetic import (
    FAR,
    NEAR,
    SyntheticSpec,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    main,
    random_scene,
    render_frame,
    scene_key,
    scene_seed,
)

TINY = dict(train_scenes=2, test_scenes=2, frames=8, height=24, width=32)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, SyntheticSpec(seed=0, **TINY), progress=False)
    return root


def test_chunk_format(dataset):
    for stage in ("train", "test"):
        index = json.loads((dataset / stage / "index.json").read_text())
        assert len(index) == 2
        scenes = [s for name in sorted(set(index.values())) for s in read_chunk(dataset / stage / name)]
        assert sorted(s["key"] for s in scenes) == sorted(index)
        for scene in scenes:
            # The original's five keys, plus the ground-truth depth its loader ignores (one PNG per frame).
            assert set(scene) == {"url", "timestamps", "cameras", "images", "key", "depths"}
            assert len(scene["depths"]) == 8 and bytes(scene["depths"][0][:4].tolist()) == b"\x89PNG"
            assert scene["cameras"].dtype == torch.float32 and scene["cameras"].shape == (8, 18)
            assert scene["timestamps"].dtype == torch.int64 and scene["timestamps"].shape == (8,)
            assert torch.all(scene["cameras"][:, 4:6] == 0)
            assert len(scene["images"]) == 8
            image_bytes = scene["images"][0]
            assert image_bytes.dtype == torch.uint8 and image_bytes.ndim == 1
            assert bytes(image_bytes[:3].tolist()) == b"\xff\xd8\xff"  # JPEG magic
            assert decode_image(image_bytes).shape == (3, 24, 32)
            # Square pixels: fx * W == fy * H; principal point at the centre.
            fx, fy, cx, cy = scene["cameras"][0, :4].tolist()
            assert fx * 32 == pytest.approx(fy * 24, rel=1e-5) and cx == cy == 0.5


def test_same_seed_same_bytes_and_different_seed_differs(dataset, tmp_path):
    generate_synthetic_dataset(tmp_path / "again", SyntheticSpec(seed=0, **TINY), progress=False)
    generate_synthetic_dataset(tmp_path / "other", SyntheticSpec(seed=1, **TINY), progress=False)
    reference = all_files(dataset)
    assert all_files(tmp_path / "again") == reference
    other = all_files(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert other["train/000000.torch"] != reference["train/000000.torch"]
    assert other["evaluation_index.json"] != reference["evaluation_index.json"]


def test_evaluation_index_format(dataset):
    index = json.loads((dataset / "evaluation_index.json").read_text())
    test_keys = json.loads((dataset / "test" / "index.json").read_text())
    assert sorted(index) == sorted(test_keys)
    for entry in index.values():
        assert set(entry) == {"context", "target"}
        left, right = entry["context"]
        assert 0 <= left < right < 8 and right - left == 4  # default gap frames // 2
        assert len(set(entry["target"])) == 3
        assert all(left < t < right for t in entry["target"])


def project(points: np.ndarray, c2w: torch.Tensor, k: torch.Tensor, height: int, width: int):
    """World points [N, 3] -> (row, col) pixel indices [N], z-depth [N] through one stored camera."""
    w2c = torch.linalg.inv(c2w.double()).numpy()
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ k.double().numpy().T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]  # normalized: pixel centre of column c is (c + 0.5) / W
    return np.floor(v * height).astype(int), np.floor(u * width).astype(int), cam[:, 2]


def test_world_points_project_consistently_through_stored_cameras(dataset):
    """Unproject frame 0 with its rendered depth and the *stored* cameras; every other frame must
    see the same depth and colour there. A wrong convention (e.g. c2w stored instead of w2c)
    must fail the same check."""
    height, width = 24, 32
    scene = read_chunk(dataset / "train" / "000000.torch")[0]
    c2w, k = vector_to_cameras(scene["cameras"])
    geometry = random_scene(scene_seed(0, "train", 0), 8, height, width)
    assert scene["key"] == scene_key(0, "train", 0)
    np.testing.assert_allclose(c2w.numpy(), geometry.c2w, atol=1e-4)

    _, depth0 = render_frame(geometry, 0, height, width)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    pixels = np.stack([(cols.ravel() + 0.5) / width, (rows.ravel() + 0.5) / height, np.ones(rows.size)], 1)
    cam_points = (pixels @ np.linalg.inv(k[0].double().numpy()).T) * depth0.reshape(-1, 1)
    world = cam_points @ c2w[0, :3, :3].double().numpy().T + c2w[0, :3, 3].double().numpy()
    image0 = decode_image(scene["images"][0]).permute(1, 2, 0).numpy().reshape(-1, 3)

    def errors(frame: int, c2w_frame: torch.Tensor) -> tuple[float, float, int]:
        # Normalized intrinsics hold at any resolution: a 4x finer depth map locates points precisely.
        _, fine_depth = render_frame(geometry, frame, 4 * height, 4 * width)
        image = decode_image(scene["images"][frame]).permute(1, 2, 0).numpy()
        r, c, z = project(world, c2w_frame, k[frame], 4 * height, 4 * width)
        inside = (r >= 0) & (r < 4 * height) & (c >= 0) & (c < 4 * width) & (z > 0)
        r, c, z = r[inside], c[inside], z[inside]
        depth_error = np.abs(fine_depth[r, c] - z) / z
        visible = depth_error < 0.05
        colour_error = np.abs(image[r // 4, c // 4] - image0[inside]).mean(axis=1)[visible]
        return float(np.median(depth_error)), float(np.median(colour_error)), int(visible.sum())

    for frame in (1, 4, 7):
        depth_error, colour_error, count = errors(frame, c2w[frame])
        assert count > 0.2 * height * width, f"frame {frame}: only {count} pixels re-observed"
        assert depth_error < 0.01, f"frame {frame}: median relative depth error {depth_error}"
        assert colour_error < 0.08, f"frame {frame}: median colour error {colour_error}"
    # Negative control: interpreting the stored matrix with the wrong direction breaks consistency.
    wrong = torch.linalg.inv(c2w[4].double()).float()
    depth_error, _, _ = errors(4, wrong)
    assert depth_error > 0.05


def test_depths_stay_inside_documented_near_far():
    for index in range(12):
        scene = random_scene(scene_seed(3, "train", index), 6, 12, 16)
        for frame in range(0, 6, 2):
            _, depth = render_frame(scene, frame, 12, 16)
            assert NEAR < depth.min() and depth.max() < FAR


def test_cameras_move_like_realestate10k():
    scene = random_scene(scene_seed(5, "train", 0), 16, 8, 8)
    centres = scene.c2w[:, :3, 3]
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert np.all(steps > 0) and steps.max() < 4 * steps.mean()  # smooth, no jumps
    forward = scene.c2w[:, :3, 2]
    assert np.all(forward[:, 2] > np.cos(np.radians(30)))  # looking roughly along +z: small rotations


def test_ensure_generates_once(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)  # an empty stage folder does not count as cached
    assert ensure_synthetic_dataset(tmp_path / "d", SyntheticSpec(seed=2, **TINY), progress=False) is True
    before = all_files(tmp_path / "d")
    assert {"train/index.json", "test/index.json", "evaluation_index.json", "synthetic.json"} <= set(before)
    assert not (tmp_path / "d.partial").exists()
    assert ensure_synthetic_dataset(tmp_path / "d", SyntheticSpec(seed=2, **TINY), progress=False) is False
    with pytest.warns(UserWarning, match="seed"):
        assert ensure_synthetic_dataset(tmp_path / "d", SyntheticSpec(seed=3, **TINY), progress=False) is False
    assert all_files(tmp_path / "d") == before


def test_cli_and_bad_arguments(tmp_path):
    main(["--out", str(tmp_path / "cli"), "--train-scenes", "1", "--test-scenes", "1", "--frames", "6",
          "--height", "16", "--width", "16", "--seed", "4", "--context-gap", "5"])
    index = json.loads((tmp_path / "cli" / "evaluation_index.json").read_text())
    assert [entry["context"] for entry in index.values()] == [[0, 5]]
    with pytest.raises(ValueError, match="context-gap"):
        generate_synthetic_dataset(tmp_path / "bad", SyntheticSpec(frames=8, context_gap=9), progress=False)
    with pytest.raises(ValueError, match="frames"):
        generate_synthetic_dataset(tmp_path / "bad", SyntheticSpec(frames=3), progress=False)
