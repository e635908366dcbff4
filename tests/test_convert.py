"""Converters: RealEstate10K camera files + frames and COLMAP models (text and binary) -> chunks."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fabric_mvsplat.data.chunk_io import read_chunk, vector_to_cameras
from fabric_mvsplat.data.convert import main
from fabric_mvsplat.data.convert_colmap import Destination, colmap_scene, convert_colmap
from fabric_mvsplat.data.convert_realestate10k import convert_realestate10k


def image_file(path: Path, seed: int, size=(8, 6), format="PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=format)
    return path.read_bytes()


def read_stage(stage: Path) -> dict[str, dict]:
    index = json.loads((stage / "index.json").read_text())
    scenes = {s["key"]: s for name in sorted(set(index.values())) for s in read_chunk(stage / name)}
    assert sorted(scenes) == sorted(index)
    return scenes


# --- RealEstate10K -------------------------------------------------------------------------------

def camera_line(timestamp: int, seed: int) -> tuple[str, list[float]]:
    values = [0.5 + seed * 0.01, 0.9, 0.5, 0.5, 0.0, 0.0] + list(np.random.default_rng(seed).normal(size=12))
    return f"{timestamp} " + " ".join(repr(float(v)) for v in values), values


@pytest.fixture
def re10k(tmp_path):
    cameras, frames, expected = tmp_path / "cameras", tmp_path / "frames", {}
    cameras.mkdir()
    for s, key in enumerate(["aaaa", "bbbb", "cccc"]):
        lines, rows, images = [f"https://www.youtube.com/watch?v={key}"], [], []
        for f, timestamp in enumerate([1000, 34000, 67000]):
            line, values = camera_line(timestamp, 10 * s + f)
            lines.append(line)
            rows.append(values)
            if key == "bbbb" and f == 1:
                continue  # one frame was never extracted
            fmt, suffix = ("JPEG", "jpg") if f == 2 else ("PNG", "png")
            if key != "cccc":  # cccc has no frame folder at all
                images.append(image_file(frames / key / f"{timestamp}.{suffix}", 10 * s + f, format=fmt))
        (cameras / f"{key}.txt").write_text("\n".join(lines) + "\n")
        expected[key] = (lines[0], rows, images)
    return cameras, frames, expected


def test_realestate10k_round_trip(re10k, tmp_path):
    cameras, frames, expected = re10k
    with pytest.warns(UserWarning) as caught:
        index = convert_realestate10k(cameras, frames, tmp_path / "out" / "train", target_bytes=1, progress=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "cccc" in messages and "1 of 3 frames" in messages
    assert sorted(index) == ["aaaa", "bbbb"] and len(set(index.values())) == 2  # chunked by size
    scenes = read_stage(tmp_path / "out" / "train")

    url, rows, images = expected["aaaa"]
    scene = scenes["aaaa"]
    assert scene["url"] == url
    assert scene["timestamps"].tolist() == [1000, 34000, 67000] and scene["timestamps"].dtype == torch.int64
    assert scene["cameras"].dtype == torch.float32
    torch.testing.assert_close(scene["cameras"], torch.tensor(rows, dtype=torch.float32))
    assert [bytes(image.numpy()) for image in scene["images"]] == images  # file bytes unchanged

    url, rows, images = expected["bbbb"]
    assert scenes["bbbb"]["timestamps"].tolist() == [1000, 67000]
    torch.testing.assert_close(scenes["bbbb"]["cameras"], torch.tensor([rows[0], rows[2]], dtype=torch.float32))
    assert [bytes(image.numpy()) for image in scenes["bbbb"]["images"]] == images


@pytest.mark.filterwarnings("ignore:.*(frame folder|frames have no image):UserWarning")
def test_realestate10k_errors(re10k, tmp_path):
    cameras, frames, _ = re10k
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_realestate10k(tmp_path / "nowhere", frames, tmp_path / "o1", progress=False)
    (cameras / "dddd.txt").write_text("https://x\n1000 0.5 0.9 0.5\n")
    with pytest.raises(ValueError, match=r"dddd.txt:2 has 4 values, expected 19"):
        convert_realestate10k(cameras, frames, tmp_path / "o2", progress=False)
    (cameras / "dddd.txt").unlink()
    out = tmp_path / "o3"
    main(["realestate10k", "--cameras", str(cameras), "--frames", str(frames), "--out", str(out)])
    assert len(json.loads((out / "index.json").read_text())) == 2
    with pytest.raises(FileExistsError, match="already holds chunks"):
        convert_realestate10k(cameras, frames, out, progress=False)


# --- COLMAP --------------------------------------------------------------------------------------

MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "OPENCV": 4}
# Quaternions (w, x, y, z) with known rotations: identity, 90deg about z, 180deg about x.
POSES = {
    "b.png": ((1.0, 0.0, 0.0, 0.0), (0.1, 0.2, 0.3), np.eye(3)),
    "a.png": ((np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)), (1.0, 0.0, 2.0), np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])),
    "c.png": ((0.0, 1.0, 0.0, 0.0), (0.0, -1.0, 0.5), np.diag([1.0, -1.0, -1.0])),
}


def write_colmap_text(model: Path, cameras: list[tuple[str, list[float]]]) -> None:
    model.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list", *(f"{i + 1} {name} 8 6 " + " ".join(map(str, params))
                                for i, (name, params) in enumerate(cameras))]
    (model / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:"]
    for image_id, (name, (q, t, _)) in enumerate(POSES.items(), start=1):
        camera_id = 1 + (image_id - 1) % len(cameras)
        lines.append(f"{image_id} {' '.join(map(str, q))} {' '.join(map(str, t))} {camera_id} {name}")
        lines.append("1.5 2.5 -1 3.0 4.0 7" if image_id == 2 else "")  # points line, possibly empty
    (model / "images.txt").write_text("\n".join(lines) + "\n")


def write_colmap_binary(model: Path, cameras: list[tuple[str, list[float]]]) -> None:
    model.mkdir(parents=True, exist_ok=True)
    data = struct.pack("<Q", len(cameras))
    for i, (name, params) in enumerate(cameras):
        data += struct.pack("<iiQQ", i + 1, MODEL_IDS[name], 8, 6) + struct.pack(f"<{len(params)}d", *params)
    (model / "cameras.bin").write_bytes(data)
    data = struct.pack("<Q", len(POSES))
    for image_id, (name, (q, t, _)) in enumerate(POSES.items(), start=1):
        camera_id = 1 + (image_id - 1) % len(cameras)
        points = [(1.5, 2.5, -1), (3.0, 4.0, 7)] if image_id == 2 else []
        data += struct.pack("<i7di", image_id, *q, *t, camera_id) + name.encode() + b"\x00"
        data += struct.pack("<Q", len(points)) + b"".join(struct.pack("<ddq", *p) for p in points)
    (model / "images.bin").write_bytes(data)


@pytest.fixture
def colmap_images(tmp_path):
    images = tmp_path / "images"
    return images, {name: image_file(images / name, seed) for seed, name in enumerate(POSES)}


PINHOLE_CAMERAS = [("PINHOLE", [6.0, 6.1, 4.0, 3.0]), ("SIMPLE_RADIAL", [7.0, 4.2, 2.9, 0.0])]


@pytest.mark.parametrize("writer", [write_colmap_text, write_colmap_binary])
def test_colmap_round_trip(writer, colmap_images, tmp_path):
    images, files = colmap_images
    writer(tmp_path / "sparse" / "0", PINHOLE_CAMERAS)
    index = convert_colmap([tmp_path / "sparse" / "0"], [images], ["room"], Destination(out=tmp_path / "out" / "test"),
                           report=lambda line: None)
    assert index == {"test": {"room": "000000.torch"}}
    scene = read_stage(tmp_path / "out" / "test")["room"]
    assert scene["url"] == str(images) and scene["timestamps"].tolist() == [0, 1, 2]
    names = sorted(POSES)  # frames sorted by image name, whatever the model's order
    assert scene["file_names"] == names
    assert [bytes(image.numpy()) for image in scene["images"]] == [files[n] for n in names]

    c2w, k = vector_to_cameras(scene["cameras"])
    assert scene["cameras"][:, 4:6].abs().max() == 0
    # a.png is image 2 -> camera 2 (SIMPLE_RADIAL, f=7, cx=4.2, cy=2.9); b.png, c.png use camera 1 (PINHOLE).
    torch.testing.assert_close(k[0], torch.tensor([[7 / 8, 0, 4.2 / 8], [0, 7 / 6, 2.9 / 6], [0, 0, 1.0]]))
    torch.testing.assert_close(k[1], torch.tensor([[6 / 8, 0, 4 / 8], [0, 6.1 / 6, 3 / 6], [0, 0, 1.0]]))
    for view, name in enumerate(names):
        _, t, rotation = POSES[name]
        w2c = torch.linalg.inv(c2w[view].double())
        torch.testing.assert_close(w2c[:3, :3], torch.tensor(rotation), atol=1e-6, rtol=0)
        torch.testing.assert_close(w2c[:3, 3], torch.tensor(t, dtype=torch.float64), atol=1e-6, rtol=0)

    # A world point lands where COLMAP's pixel convention puts it: x_pix = f * X/Z + c, divided by the size.
    point = np.array([0.3, -0.2, 4.0])
    _, t, rotation = POSES["c.png"]
    cam = rotation @ point + np.array(t)
    expected = np.array([(6.0 * cam[0] / cam[2] + 4.0) / 8, (6.1 * cam[1] / cam[2] + 3.0) / 6])
    stored = k[2].double() @ torch.linalg.inv(c2w[2].double())[:3] @ torch.tensor([*point, 1.0])
    np.testing.assert_allclose((stored[:2] / stored[2]).numpy(), expected, atol=1e-6)


def test_colmap_text_and_binary_agree(colmap_images, tmp_path):
    images, _ = colmap_images
    write_colmap_text(tmp_path / "text", PINHOLE_CAMERAS)
    write_colmap_binary(tmp_path / "bin", PINHOLE_CAMERAS)
    text, binary = colmap_scene(tmp_path / "text", images, "s"), colmap_scene(tmp_path / "bin", images, "s")
    torch.testing.assert_close(text.scene["cameras"], binary.scene["cameras"])


@pytest.mark.parametrize("writer", [write_colmap_text, write_colmap_binary])
def test_colmap_rejects_distorted_camera(writer, colmap_images, tmp_path):
    images, _ = colmap_images
    writer(tmp_path / "model", [("OPENCV", [6.0, 5.0, 4.0, 3.0, 0.1, 0.0, 0.0, 0.0])])
    with pytest.raises(ValueError, match="OPENCV.*colmap image_undistorter"):
        colmap_scene(tmp_path / "model", images, "s")
    writer(tmp_path / "ok", [("OPENCV", [6.0, 6.0, 4.0, 3.0, 0.0, 0.0, 0.0, 0.0])])  # zero distortion is fine
    assert colmap_scene(tmp_path / "ok", images, "s").scene["cameras"].shape == (3, 18)


def test_colmap_errors_name_missing_files(colmap_images, tmp_path):
    images, _ = colmap_images
    with pytest.raises(FileNotFoundError, match="cameras.txt \\+ images.txt"):
        colmap_scene(tmp_path / "empty", images, "s")
    write_colmap_text(tmp_path / "model", [("SIMPLE_PINHOLE", [6.0, 4.0, 3.0])])
    (images / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match="c.png"):
        colmap_scene(tmp_path / "model", images, "s")
    image_file(images / "c.png", 0, size=(6, 6))
    with pytest.raises(ValueError, match="6x6 but its COLMAP camera is 8x6"):
        colmap_scene(tmp_path / "model", images, "s")


def test_colmap_cli_two_scenes(colmap_images, tmp_path):
    images, _ = colmap_images
    write_colmap_text(tmp_path / "m1", PINHOLE_CAMERAS)
    write_colmap_binary(tmp_path / "m2", [("SIMPLE_PINHOLE", [6.0, 4.0, 3.0])])
    out = tmp_path / "stage"
    main(["colmap", "--model", str(tmp_path / "m1"), "--images", str(images), "--key", "one",
          "--model", str(tmp_path / "m2"), "--images", str(images), "--key", "two", "--out", str(out)])
    assert sorted(read_stage(out)) == ["one", "two"]
    with pytest.raises(ValueError, match="give one of each per scene"):
        convert_colmap([tmp_path / "m1"], [images, images], ["x"], Destination(out=tmp_path / "other"))
    assert not (tmp_path / "other").exists()
