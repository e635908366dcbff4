"""Your own images -> Gaussians, video, depth, renders: the `fabric_mvsplat.render` command and the Python API
(`fabric_mvsplat.inference`) on the demo checkpoint the end-to-end tests train, against test mode's renders of the
same views, a COLMAP model of the same cameras, plyfile, ffmpeg's decoder, and every bad input."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import REPO, subprocess_env
from PIL import Image
from plyfile import PlyData
from scipy.spatial.transform import Rotation

from fabric_mvsplat import render as render_command
from fabric_mvsplat.inference import load_model
from fabric_mvsplat.model.ply_export import ply_attribute_names

# The session's trained demo checkpoint and test-mode run (conftest) live on one xdist worker.
pytestmark = pytest.mark.xdist_group("demo_run")
FRAMES, CHUNK = 7, 3  # video frames and frames per decoder call: three chunks, the last one short


def run_render(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "fabric_mvsplat.render", *map(str, args)], cwd=cwd,
                            env=subprocess_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def evaluation_entry(synthetic_root) -> tuple[str, dict]:
    index = json.loads((synthetic_root / "evaluation_index.json").read_text())
    key = sorted(index)[0]
    return key, index[key]


@pytest.fixture(scope="module")
def chunk_render(synthetic_root, trained_checkpoint, evaluation_entry, tmp_path_factory):
    """The command on a chunk scene with the evaluation index's context and target views: (output, stdout)."""
    key, entry = evaluation_entry
    out = tmp_path_factory.mktemp("render") / "out"
    result = run_render([trained_checkpoint, "--chunks", synthetic_root, "--scene", key, "--context",
                         *entry["context"], "--render", *entry["target"], "--frames", FRAMES, "--chunk-size", CHUNK,
                         "--output", out], cwd=out.parent)
    return out, result.stdout


def test_chunk_scene_renders_equal_test_modes(chunk_render, demo_test_run, evaluation_entry):
    """Same checkpoint, same views: the same pixels as test mode, so both go through one preprocessing path."""
    out, _ = chunk_render
    key, entry = evaluation_entry
    for frame in entry["target"]:
        ours = np.asarray(Image.open(out / "renders" / f"{frame}.png"))
        test_mode = np.asarray(Image.open(demo_test_run / key / "color" / f"{frame:06d}.png"))
        assert np.array_equal(ours, test_mode), frame
    for frame in entry["context"]:  # the preprocessed context images, as test mode saved them
        assert np.array_equal(np.asarray(Image.open(out / "context" / f"{frame}.png")),
                              np.asarray(Image.open(demo_test_run / key / "context" / f"{frame:06d}.png")))


def test_command_prints_its_choices_and_timings(chunk_render, evaluation_entry):
    _, stdout = chunk_render
    first, last = evaluation_entry[1]["context"]
    assert f"context: {first}, {last} (given); near 1, far 20" in stdout and "image 32x32" in stdout
    assert "encoding: " in stdout and "ms/frame" in stdout and f"chunks of {CHUNK}" in stdout
    assert "python -m fabric_mvsplat.view" in stdout


def test_video_has_the_requested_frames_and_trajectory_json_its_cameras(chunk_render):
    out, _ = chunk_render
    reader = imageio_ffmpeg.read_frames(str(out / "video.mp4"))
    meta = next(reader)
    assert meta["size"] == (32, 32)
    assert sum(1 for _ in reader) == FRAMES
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert len(trajectory["frames"]) == FRAMES and trajectory["image_shape"] == [32, 32]
    scene = json.loads((out / "scene.json").read_text())
    # The interpolation starts at the first context camera and ends at the last.
    for end, camera in ((0, scene["context"][0]), (-1, scene["context"][-1])):
        np.testing.assert_allclose(trajectory["frames"][end]["c2w"], camera["c2w"], atol=1e-5)


def test_ply_round_trips_through_plyfile_in_the_3dgs_layout(chunk_render, synthetic_root, trained_checkpoint,
                                                            evaluation_entry):
    out, _ = chunk_render
    key, entry = evaluation_entry
    vertex = PlyData.read(str(out / "gaussians.ply"))["vertex"]
    assert list(vertex.data.dtype.names) == ply_attribute_names()  # x y z nx ny nz f_dc_* f_rest_* opacity ...
    assert all(vertex.data.dtype[name] == np.float32 for name in vertex.data.dtype.names)
    prediction, _ = predict_chunk_scene(synthetic_root, trained_checkpoint, key, entry)
    gaussians = prediction.world_gaussians()
    means = np.stack([vertex[k] for k in "xyz"], 1)
    np.testing.assert_allclose(means, gaussians.means[0].numpy(), rtol=1e-5, atol=1e-5)
    # Covariance back from log-scales and the quaternion, as a splat viewer rebuilds it.
    scales = np.exp(np.stack([vertex[f"scale_{i}"] for i in range(3)], 1))
    rotation = Rotation.from_quat(np.stack([vertex[f"rot_{i}"] for i in (1, 2, 3, 0)], 1)).as_matrix()
    covariances = rotation @ (scales[:, :, None] ** 2 * rotation.transpose(0, 2, 1))
    expected = gaussians.covariances[0].double().numpy()
    np.testing.assert_allclose(covariances, expected, atol=1e-6 * np.abs(expected).max() + 1e-9, rtol=1e-3)
    opacity = 1 / (1 + np.exp(-vertex["opacity"].astype(np.float64)))
    np.testing.assert_allclose(opacity, gaussians.opacities[0].numpy(), atol=1e-5)


def predict_chunk_scene(root: Path, checkpoint: Path, key: str, entry: dict):
    """The API on the same scene and views, in this process."""
    capture = render_command.capture_from_chunks(root, key)
    model = load_model(checkpoint, device="cpu")
    context, targets = entry["context"], entry["target"]
    frames = {i: capture.load_frame(i) for i in context + targets}
    return model.predict_frames(frames, capture.extrinsics, capture.intrinsics, context, targets,
                                capture.names), model


def test_depth_npy_is_the_rendered_expected_depth_and_png_its_16_bit_map(chunk_render, synthetic_root,
                                                                         trained_checkpoint, evaluation_entry):
    out, _ = chunk_render
    key, entry = evaluation_entry
    prediction, model = predict_chunk_scene(synthetic_root, trained_checkpoint, key, entry)
    c2w, k = prediction.context_cameras()
    rendered = model.render(prediction, c2w, k)
    scene = json.loads((out / "scene.json").read_text())
    for i, frame in enumerate(entry["context"]):
        depth = np.load(out / "depth" / f"{frame}.npy")
        assert depth.dtype == np.float32 and depth.shape == (32, 32)
        np.testing.assert_allclose(depth, rendered.depth[i].numpy(), rtol=1e-5)
        png = np.asarray(Image.open(out / "depth" / f"{frame}.png"))
        assert png.dtype == np.uint16 and png.min() == 0 and png.max() == 65535
        low, high = scene["depth_png_ranges"][str(frame)].values()
        np.testing.assert_allclose(low + png / 65535 * (high - low), depth, atol=(high - low) / 65535)
    # Target views rendered by the API equal the command's renders (and so test mode's).
    targets = model.render_targets(prediction)
    for i, frame in enumerate(entry["target"]):
        np.testing.assert_allclose(np.load(out / "renders" / f"{frame}_depth.npy"), targets.depth[i].numpy(),
                                   rtol=1e-5)


# ---- COLMAP --------------------------------------------------------------------------------------
def numbers(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def write_colmap_text_model(model: Path, images: Path, capture, order: list[int]) -> list[str]:
    """A COLMAP text model (PINHOLE cameras in pixels, world-to-camera quaternions) of the capture's true cameras,
    images written as frame<i>.png in a shuffled order; returns the file name of each frame."""
    model.mkdir(parents=True)
    images.mkdir(parents=True)
    names, camera_lines, image_lines = [], [], []
    for image_id, frame in enumerate(order, start=1):
        picture = capture.load_frame(frame)
        name = f"frame{frame}.png"
        picture.save(images / name)
        w, h = picture.size
        k = capture.intrinsics[frame].double().numpy()
        camera_lines.append(f"{image_id} PINHOLE {w} {h} " + numbers([k[0, 0] * w, k[1, 1] * h, k[0, 2] * w, k[1, 2] * h]))
        w2c = np.linalg.inv(capture.extrinsics[frame].double().numpy())
        x, y, z, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        image_lines += [f"{image_id} {numbers([qw, x, y, z, *w2c[:3, 3]])} {image_id} {name}", ""]
    (model / "cameras.txt").write_text("# Camera list\n" + "\n".join(camera_lines) + "\n")
    (model / "images.txt").write_text("# Image list\n" + "\n".join(image_lines) + "\n")
    names = {frame: f"frame{frame}.png" for frame in order}
    return names


def test_colmap_model_of_the_true_cameras_matches_the_chunk_scene(chunk_render, synthetic_root, trained_checkpoint,
                                                                  evaluation_entry, tmp_path):
    out, _ = chunk_render
    key, entry = evaluation_entry
    capture = render_command.capture_from_chunks(synthetic_root, key)
    frames = sorted(set(entry["context"] + entry["target"]) | {0, len(capture.names) - 1})
    order = list(np.random.default_rng(0).permutation(frames))
    names = write_colmap_text_model(tmp_path / "sparse" / "0", tmp_path / "images", capture, order)
    (tmp_path / "images" / "unregistered.png").write_bytes((tmp_path / "images" / names[order[0]]).read_bytes())
    colmap_out = tmp_path / "colmap_out"
    run_render([trained_checkpoint, "--colmap", tmp_path / "sparse", "--images", tmp_path / "images", "--context",
                *(names[f] for f in entry["context"]), "--render", *(names[f] for f in entry["target"]),
                "--frames", 3, "--output", colmap_out], cwd=tmp_path)
    for frame in entry["target"]:
        ours = np.asarray(Image.open(colmap_out / "renders" / f"frame{frame}.png")).astype(int)
        chunk = np.asarray(Image.open(out / "renders" / f"{frame}.png")).astype(int)
        assert np.abs(ours - chunk).max() <= 2, frame
        np.testing.assert_allclose(np.load(colmap_out / "renders" / f"frame{frame}_depth.npy"),
                                   np.load(out / "renders" / f"{frame}_depth.npy"), rtol=1e-3, atol=1e-3)
    for frame in entry["context"]:
        np.testing.assert_allclose(np.load(colmap_out / "depth" / f"frame{frame}.npy"),
                                   np.load(out / "depth" / f"{frame}.npy"), rtol=1e-3, atol=1e-3)
    # An image COLMAP did not register has no camera: named as such.
    result = run_render([trained_checkpoint, "--colmap", tmp_path / "sparse", "--images", tmp_path / "images",
                         "--context", "unregistered.png", names[order[1]], "--output", tmp_path / "other"],
                        cwd=tmp_path, check=False)
    assert result.returncode == 2 and "unregistered.png" in result.stderr and "no camera" in result.stderr
    assert not (tmp_path / "other").exists()


# ---- the Python API and the JSON input -----------------------------------------------------------
@pytest.fixture(scope="module")
def json_capture(synthetic_root, evaluation_entry, tmp_path_factory) -> tuple[Path, dict]:
    """The evaluation scene's frames as PNG files plus a cameras JSON (pixel intrinsics)."""
    key, entry = evaluation_entry
    capture = render_command.capture_from_chunks(synthetic_root, key)
    folder = tmp_path_factory.mktemp("json_capture")
    frames = []
    for frame in entry["context"] + entry["target"]:
        picture = capture.load_frame(frame)
        picture.save(folder / f"view{frame}.png")
        k = capture.intrinsics[frame].clone()
        k[0] *= picture.width
        k[1] *= picture.height
        frames.append({"image": f"view{frame}.png", "K": k.tolist(), "c2w": capture.extrinsics[frame].tolist()})
    document = {"intrinsics": "pixels", "frames": frames}
    (folder / "cameras.json").write_text(json.dumps(document))
    return folder, document


def test_python_api_predicts_renders_and_exports(json_capture, trained_checkpoint, chunk_render, evaluation_entry,
                                                 tmp_path):
    from fabric_mvsplat.inference import normalize_intrinsics

    folder, document = json_capture
    _, entry = evaluation_entry
    model = load_model(trained_checkpoint, device="cpu")
    frames = document["frames"][:2]
    images = [folder / f["image"] for f in frames]
    intrinsics = normalize_intrinsics(np.array([f["K"] for f in frames]), 32, 32)
    prediction = model.predict(images, np.array([f["c2w"] for f in frames]), intrinsics)
    assert prediction.names == [f"view{f}.png" for f in entry["context"]] and prediction.image_shape == (32, 32)
    target = document["frames"][2]
    rendered = model.render(prediction, np.array([target["c2w"]]), normalize_intrinsics(np.array([target["K"]]), 32, 32))
    assert rendered.color.shape == (1, 3, 32, 32) and rendered.depth.shape == rendered.alpha.shape == (1, 32, 32)
    assert 0 <= float(rendered.alpha.min()) and float(rendered.alpha.max()) <= 1 + 1e-5
    # The target's camera rendered through the API equals the command's render (test mode's pixels).
    command_render = np.asarray(Image.open(chunk_render[0] / "renders" / f"{entry['target'][0]}.png"))
    api_render = (rendered.color[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(api_render.astype(int) - command_render).max() <= 1
    prediction.save_ply(tmp_path / "scene.ply")
    assert PlyData.read(str(tmp_path / "scene.ply"))["vertex"].count == prediction.gaussians.means.shape[1]


def test_json_input_writes_a_gif_without_ffmpeg(json_capture, trained_checkpoint, tmp_path, monkeypatch, capsys):
    from fabric_mvsplat.evaluation import media

    folder, _ = json_capture
    monkeypatch.setattr(media, "find_ffmpeg", lambda: None)
    render_command.main([str(trained_checkpoint), "--cameras", str(folder / "cameras.json"), "--frames", "5",
                         "--trajectory", "wobble", "--video-shape", "40", "24", "--output", str(tmp_path / "out")])
    assert "writing a GIF instead" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "video.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (24, 40)  # W x H
    assert not (tmp_path / "out" / "video.mp4").exists()


def test_default_context_is_a_well_spread_pair_facing_the_same_way():
    from fabric_mvsplat.render import pick_context

    c2w = torch.eye(4).repeat(5, 1, 1)
    c2w[:, 0, 3] = torch.tensor([0.0, 1.0, 2.0, 3.0, 9.0])
    c2w[4, :3, :3] = torch.tensor([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]])  # far away but looking back
    assert pick_context(c2w, 2) == [0, 3]
    assert pick_context(c2w, 3) == [0, 3, 4]


def test_demo_prints_a_render_command_that_runs(demo_training, synthetic_root, trained_checkpoint, tmp_path):
    from fabric_mvsplat.report import render_command as demo_render_command
    from loop_fixtures import compose_cfg
    from conftest import demo_overrides

    cfg = compose_cfg(demo_overrides(synthetic_root))
    line = demo_render_command(cfg, trained_checkpoint, tmp_path / "run with space")
    args = shlex.split(line)
    assert args[:3] == ["python", "-m", "fabric_mvsplat.render"] and args[3] == str(trained_checkpoint)
    result = subprocess.run([sys.executable, *args[1:], "--frames", "2"], cwd=tmp_path, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (Path(args[args.index("--output") + 1]) / "gaussians.ply").is_file()


# ---- bad inputs: one line, exit code 2, nothing written ---------------------------------------------
def write_json(folder: Path, frames: list[dict], unit: str = "pixels") -> Path:
    path = folder / "bad.json"
    path.write_text(json.dumps({"intrinsics": unit, "frames": frames}))
    return path


def bad_cases(folder: Path, document: dict, checkpoint: Path) -> dict[str, tuple[list[str], str]]:
    frames = document["frames"]
    grey = folder / "grey.png"
    Image.new("L", (32, 32), 128).save(grey)
    (folder / "garbage.png").write_bytes(b"not an image at all")
    no_camera = [frames[0], {k: v for k, v in frames[1].items() if k != "c2w"}]
    nan_camera = [frames[0], {**frames[1], "c2w": [[float("nan")] * 4] + frames[1]["c2w"][1:]}]
    scaled = np.array(frames[1]["c2w"])
    scaled[:3, :3] *= 2
    non_rotation = [frames[0], {**frames[1], "c2w": scaled.tolist()}]
    wrong_config = folder / "wrong_config.yaml"
    wrong_config.write_text((checkpoint.parents[1] / "config.yaml").read_text().replace("d_feature: 32",
                                                                                           "d_feature: 48"))
    full = folder / "occupied"
    full.mkdir(exist_ok=True)
    (full / "gaussians.ply").write_bytes(b"an earlier result")

    def json_case(name: str, case_frames: list[dict]) -> list[str]:
        sub = folder / name
        sub.mkdir(exist_ok=True)
        for file in ("grey.png", "garbage.png", *(f["image"] for f in frames)):
            if not (sub / file).exists():
                (sub / file).write_bytes((folder / file).read_bytes())
        return ["--cameras", str(write_json(sub, case_frames))]

    return {
        "one image": (json_case("one", frames[:1]), "1 image(s) with a camera"),
        "missing camera": (json_case("missing", no_camera), f"{frames[1]['image']} has no camera ('c2w' missing)"),
        "non-RGB": (json_case("grey", [frames[0], {**frames[1], "image": "grey.png"}]), "grey.png is 'L', not RGB"),
        "unreadable": (json_case("garbage", [frames[0], {**frames[1], "image": "garbage.png"}]),
                       "garbage.png cannot be read"),
        "NaN camera": (json_case("nan", nan_camera), f"the camera of {frames[1]['image']} has non-finite values"),
        "non-rotation": (json_case("rotation", non_rotation), "rotation is not a rotation"),
        "wrong config": (json_case("config", frames) + ["--config", str(wrong_config)], "do not fit the model"),
        "occupied output": (json_case("occupied", frames), "already holds results"),
    }


@pytest.mark.parametrize("case", ["one image", "missing camera", "non-RGB", "unreadable", "NaN camera", "non-rotation",
                                  "wrong config", "occupied output"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, json_capture, trained_checkpoint, tmp_path, capsys):
    folder, document = json_capture
    for file in folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    args, expected = bad_cases(tmp_path, document, trained_checkpoint)[case]
    out = tmp_path / ("occupied" if case == "occupied output" else "out")
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    with pytest.raises(SystemExit) as exit_info:
        render_command.main([str(trained_checkpoint), *args, "--output", str(out)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("fabric_mvsplat.render: "), stderr
    assert expected in stderr, stderr
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_bad_input_through_the_console_entry_point(trained_checkpoint, tmp_path):
    """The real process: exit code 2 and one line on stderr (no traceback)."""
    result = subprocess.run([sys.executable, "-c", "from fabric_mvsplat.render import main; main()",
                             str(trained_checkpoint), "--cameras", str(tmp_path / "absent.json"), "--output",
                             str(tmp_path / "out")], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "absent.json does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_images_of_another_size_are_resized_as_test_mode_with_one_line(json_capture, trained_checkpoint, tmp_path,
                                                                      capsys):
    """48x64 photos (the scene upscaled) for a 32x32 model: resized to cover and centre-cropped, said in one line."""
    folder, document = json_capture
    frames = []
    for frame in document["frames"][:2]:
        with Image.open(folder / frame["image"]) as picture:
            picture.resize((64, 48), Image.LANCZOS).save(tmp_path / frame["image"])
        k = np.array(frame["K"]) * np.array([[2.0], [1.5], [1.0]])  # pixels of the 64x48 image
        frames.append({**frame, "K": k.tolist()})
    cameras = write_json(tmp_path, frames)
    render_command.main([str(trained_checkpoint), "--cameras", str(cameras), "--frames", "2", "--output",
                         str(tmp_path / "out")])
    stdout = capsys.readouterr().out
    assert "images: 64x48 resized to cover the model's 32x32 and centre-cropped (as test mode)" in stdout
    assert np.asarray(Image.open(tmp_path / "out" / "context" / frames[0]["image"])).shape == (32, 32, 3)


def test_an_image_above_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    """A user's image whose header declares 13000x13000 (a decompression bomb of a few kB) is refused from its
    header, as training and test mode refuse such frames: one InputError naming the file and the budget."""
    from test_data_corrupt import jpeg_declaring

    from fabric_mvsplat.errors import InputError
    from fabric_mvsplat.inference import open_rgb_image

    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_declaring(13000, 13000).numpy().tobytes())
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    with pytest.raises(InputError, match=r"bomb\.jpg is 13000x13000, above the budget of 40,000,000 pixels"):
        open_rgb_image(path, "bomb.jpg")
    assert decoded == []
