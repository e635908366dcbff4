"""`fabric-mvsplat-render` / `python -m fabric_mvsplat.render`: a checkpoint + your images -> Gaussians, a video,
depth maps and renders in one output folder (docs/inference.md).

    fabric-mvsplat-render CHECKPOINT --colmap SCENE/sparse/0 --images SCENE/images --output OUT
    fabric-mvsplat-render CHECKPOINT --chunks datasets/synthetic --scene KEY --output OUT
    fabric-mvsplat-render CHECKPOINT --cameras cameras.json --output OUT

Everything is checked before anything is written: a bad input prints one line and exits with code 2.
"""

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .errors import InputError, UserError
from .inference import (DEFAULT_CHUNK_SIZE, InferenceModel, Prediction, check_cameras, load_model,
                        normalize_intrinsics, open_rgb_image)

TRAJECTORIES = ("interpolation", "wobble")
# Two context views whose optical axes differ by more than this rarely overlap enough for the cost volume.
MAX_CONTEXT_ANGLE_DEGREES = 60.0
DEPTH_PNG_MAX = 65535  # 16-bit depth PNGs: 0 = the map's minimum depth, 65535 = its maximum (scene.json)


@dataclass
class Capture:
    """Images with cameras, however they were given: names [N], c2w [N, 4, 4] (world units, OpenCV axes),
    normalised K [N, 3, 3] and a loader for frame i (RGB PIL image, decoded on demand)."""

    names: list[str]
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    load_frame: Callable[[int], Image.Image]
    description: str
    without_camera: list[str] = field(default_factory=list)  # image files the source holds no camera for

    def index_of(self, name: str, flag: str) -> int:
        if name in self.names:
            return self.names.index(name)
        stems = [Path(n).stem for n in self.names]
        if stems.count(name) == 1:
            return stems.index(name)
        shown = ", ".join(self.names[:8]) + (" ..." if len(self.names) > 8 else "")
        if name in self.without_camera:
            raise InputError(f"{flag} {name}: the image has no camera in {self.description} (COLMAP did not "
                             f"register it): pick images with cameras ({shown})")
        raise InputError(f"{flag} {name}: no image of that name has a camera in {self.description} "
                         f"(images with cameras: {shown})")


# ---- inputs ----------------------------------------------------------------------------------------
def capture_from_colmap(model_dir: Path, images_dir: Path) -> Capture:
    """A COLMAP model (cameras, images: OpenCV world-to-camera poses, pinhole cameras) + its images folder."""
    from .data.convert_colmap import (choose_model, natural_key, normalized_intrinsics, quaternion_to_rotation,
                                      read_model)

    try:
        model_dir, _ = choose_model(model_dir)
        cameras, images, _ = read_model(model_dir)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(f"--colmap {model_dir}: {error}") from None
    if not Path(images_dir).is_dir():
        raise InputError(f"--images {images_dir} is not a folder: pass the folder holding the COLMAP model's images")
    images = sorted(images, key=lambda image: natural_key(image.name))
    w2c, intrinsics = [], []
    for image in images:
        if image.camera_id not in cameras:
            raise InputError(f"{model_dir}: image {image.name} refers to camera {image.camera_id}, which the model "
                             "does not hold: re-export the model from COLMAP")
        try:
            intrinsics.append(normalized_intrinsics(cameras[image.camera_id], image.camera_id))
        except ValueError as error:
            raise InputError(f"{model_dir}: {error}") from None
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = quaternion_to_rotation(image.qvec), image.tvec
        w2c.append(pose)
    names = [image.name for image in images]
    registered = set(names)
    unregistered = sorted(p.name for p in Path(images_dir).iterdir()
                          if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.name not in registered)
    c2w = torch.from_numpy(np.linalg.inv(np.stack(w2c))).float() if w2c else torch.zeros(0, 4, 4)
    capture = Capture(names, c2w, torch.tensor(np.stack(intrinsics) if intrinsics else np.zeros((0, 3, 3)),
                                               dtype=torch.float32),
                      lambda i: open_rgb_image(Path(images_dir) / names[i], names[i]), f"the COLMAP model {model_dir}")
    capture.without_camera = unregistered
    return capture


def capture_from_chunks(root: Path, key: str) -> Capture:
    """One scene of a chunk dataset (ROOT/test or ROOT/train), frames named by their index."""
    from .data.chunk_io import ChunkReadError, camera_problem, check_scene, read_chunk, vector_to_cameras
    from .data.chunks import decode_frame
    from .data.config import MAX_IMAGE_PIXELS

    for stage in ("test", "train"):
        index_path = Path(root) / stage / "index.json"
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
            except json.JSONDecodeError as error:
                raise InputError(f"{index_path} is not valid JSON ({error}): regenerate the dataset's index") from None
            if key in index:
                break
    else:
        raise InputError(f"--scene {key}: no scene of that key in {root}/test/index.json or {root}/train/index.json: "
                         "pass a key listed there")
    chunk_path = index_path.parent / index[key]
    try:
        scenes = {str(scene.get("key")): scene for scene in read_chunk(chunk_path)}
    except ChunkReadError as error:
        raise InputError(f"--scene {key}: {error}") from None
    if key not in scenes:
        raise InputError(f"--scene {key}: {index_path} points to {chunk_path}, which does not hold it: regenerate "
                         "the index")
    scene = scenes[key]
    try:
        check_scene(scene)
    except ValueError as error:
        raise InputError(f"{chunk_path}: {error}") from None
    problem = camera_problem(scene["cameras"])
    if problem is not None:
        raise InputError(f"{chunk_path}: scene {key!r}: {problem}: fix or drop the scene's cameras")
    extrinsics, intrinsics = vector_to_cameras(scene["cameras"])

    def load(i: int) -> Image.Image:
        try:
            return decode_frame(scene["images"][i], MAX_IMAGE_PIXELS)
        except Exception as error:
            raise InputError(f"{chunk_path}: scene {key!r} frame {i} cannot be decoded ({type(error).__name__}: "
                             f"{error}): regenerate the chunk") from None

    return Capture([str(i) for i in range(len(extrinsics))], extrinsics, intrinsics, load,
                   f"scene {key!r} of {root}")


def read_camera_entries(path: Path, need_images: bool) -> tuple[list[dict], str, Path]:
    """The cameras JSON (docs/inference.md): {"intrinsics": "normalized"|"pixels", "frames": [{"image", "K",
    "c2w"[, "width", "height"]}]} -> (frames, unit, folder the image names are relative to)."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"cameras file {path} does not exist: pass a JSON file (docs/inference.md)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"cameras file {path} is not valid JSON ({error}): see docs/inference.md for the format") from None
    if not isinstance(document, dict) or not isinstance(document.get("frames"), list):
        raise InputError(f"cameras file {path} must be an object with a \"frames\" list (docs/inference.md)")
    unit = document.get("intrinsics", "normalized")
    if unit not in ("normalized", "pixels"):
        raise InputError(f"cameras file {path}: \"intrinsics\" is {unit!r}; expected \"normalized\" or \"pixels\"")
    for n, frame in enumerate(document["frames"]):
        label = frame.get("image", frame.get("name", f"frame {n}")) if isinstance(frame, dict) else f"frame {n}"
        if not isinstance(frame, dict) or (need_images and "image" not in frame):
            raise InputError(f"cameras file {path}: {label} needs an \"image\" file name")
        for field_name, shape in (("K", (3, 3)), ("c2w", (4, 4))):
            if field_name not in frame:
                raise InputError(f"cameras file {path}: {label} has no camera ({field_name!r} missing): give every "
                                 "image its K (3x3) and c2w (4x4), or leave the image out")
            try:
                value = np.asarray(frame[field_name], dtype=np.float64)
            except (TypeError, ValueError):
                value = np.zeros(0)
            if value.shape != shape:
                raise InputError(f"cameras file {path}: {label}'s {field_name} must be a {shape[0]}x{shape[1]} "
                                 f"matrix (nested lists), got {frame[field_name]!r:.80}")
    return document["frames"], unit, Path(path).parent


def capture_from_json(path: Path) -> Capture:
    frames, unit, folder = read_camera_entries(path, need_images=True)
    names = [str(frame["image"]) for frame in frames]
    intrinsics = []
    for frame, name in zip(frames, names):
        k = np.asarray(frame["K"], dtype=np.float64)
        if unit == "pixels":
            image = open_rgb_image(folder / name, name)  # its size turns pixels into the normalised K
            k = normalize_intrinsics(k, image.width, image.height).double().numpy()
        intrinsics.append(k)
    extrinsics = torch.tensor(np.stack([np.asarray(f["c2w"], dtype=np.float64) for f in frames]) if frames
                              else np.zeros((0, 4, 4)), dtype=torch.float32)
    return Capture(names, extrinsics, torch.tensor(np.stack(intrinsics) if intrinsics else np.zeros((0, 3, 3)),
                                                   dtype=torch.float32),
                   lambda i: open_rgb_image(folder / names[i], names[i]), f"cameras file {path}")


def extra_cameras(path: Path, image_shape: tuple[int, int]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """--render-cameras: K normalised for the rendered image, or in pixels of it ("intrinsics": "pixels")."""
    frames, unit, _ = read_camera_entries(path, need_images=False)
    names = [str(frame.get("name", frame.get("image", f"camera_{n:03d}"))) for n, frame in enumerate(frames)]
    intrinsics = torch.tensor(np.stack([np.asarray(f["K"], dtype=np.float64) for f in frames]), dtype=torch.float32)
    if unit == "pixels":
        intrinsics = normalize_intrinsics(intrinsics, image_shape[1], image_shape[0])
    extrinsics = torch.tensor(np.stack([np.asarray(f["c2w"], dtype=np.float64) for f in frames]), dtype=torch.float32)
    check_cameras(extrinsics, intrinsics, names)
    return names, extrinsics, intrinsics


# ---- choices ---------------------------------------------------------------------------------------
def pick_context(extrinsics: torch.Tensor, count: int) -> list[int]:
    """A well-spread set of `count` views: the two camera centres farthest apart whose optical axes differ by at
    most MAX_CONTEXT_ANGLE_DEGREES (any pair when none qualifies), then greedily the view farthest from those
    chosen. Returned in input order."""
    centres = extrinsics[:, :3, 3].double()
    axes = extrinsics[:, :3, 2].double()
    distance = torch.cdist(centres, centres)
    cosine = (axes @ axes.T).clamp(-1, 1)
    allowed = cosine >= np.cos(np.radians(MAX_CONTEXT_ANGLE_DEGREES))
    allowed.fill_diagonal_(False)
    scores = torch.where(allowed, distance, torch.full_like(distance, -1.0)) if allowed.any() else distance
    first, second = divmod(int(scores.argmax()), len(centres))
    chosen = [first, second]
    while len(chosen) < min(count, len(centres)):
        spread = distance[:, chosen].min(dim=1).values
        spread[chosen] = -1
        chosen.append(int(spread.argmax()))
    return sorted(chosen)


def trajectory(kind: str, extrinsics: torch.Tensor, intrinsics: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras of the fly-through (world units): `interpolation` from the first context camera to the last (eased,
    as the validation videos), `wobble` circling in the first context camera's image plane with a radius of a
    quarter of the context baseline."""
    from .visualization.trajectories import generate_wobble, interpolate_extrinsics, interpolate_intrinsics, smooth_t

    if kind == "interpolation":
        t = smooth_t(frames)
        return (interpolate_extrinsics(extrinsics[0], extrinsics[-1], t),
                interpolate_intrinsics(intrinsics[0], intrinsics[-1], t))
    radius = (extrinsics[0, :3, 3] - extrinsics[-1, :3, 3]).norm() * 0.25
    t = torch.linspace(0, 1, frames)
    return generate_wobble(extrinsics[0], radius, t), intrinsics[0].expand(frames, 3, 3).clone()


def refuse_existing_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        held = sorted(p.name for p in output.iterdir())[:3] if output.is_dir() else []
        raise InputError(f"--output {output} already holds results ({', '.join(held) or 'a file'}): choose a new "
                         "folder or delete that one")


def file_stem(name: str) -> str:
    """An output file name for an input name (COLMAP names may hold folders)."""
    return Path(name).with_suffix("").as_posix().replace("/", "_") or "view"


# ---- outputs ---------------------------------------------------------------------------------------
def save_depth(depth: torch.Tensor, stem: Path) -> dict:
    """[H, W] world-unit depth -> stem.npy (float32) and stem.png (16 bit, linear from the map's min to max)."""
    values = depth.numpy().astype(np.float32)
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.save(stem.parent / f"{stem.name}.npy", values)
    low, high = float(values.min()), float(values.max())
    steps = np.round((values - low) / max(high - low, 1e-12) * DEPTH_PNG_MAX).astype(np.uint16)
    Image.fromarray(steps).save(stem.parent / f"{stem.name}.png")
    return {"png_0": low, "png_65535": high}


def save_png(image: torch.Tensor, path: Path) -> None:
    from .evaluation.media import save_image

    save_image(image.float(), path)


def camera_records(extrinsics: torch.Tensor, intrinsics: torch.Tensor, names: list[str] | None = None) -> list[dict]:
    records = []
    for i, (c2w, k) in enumerate(zip(extrinsics.tolist(), intrinsics.tolist())):
        records.append({**({"name": names[i]} if names else {}), "c2w": c2w, "K": k})
    return records


def write_video(model: InferenceModel, prediction: Prediction, extrinsics: torch.Tensor, intrinsics: torch.Tensor,
                path: Path, *, fps: int, chunk_size: int, image_shape: tuple[int, int] | None = None) -> list[float]:
    """Render the cameras chunk by chunk into the video at `path` (.mp4 or .gif): one chunk of frames in memory at
    a time. Returns the seconds per frame of each chunk."""
    from .evaluation.media import VideoWriter

    frame_seconds = []
    started = time.perf_counter()
    with VideoWriter(path, fps=fps) as writer:
        for chunk in model.render_chunks(prediction, extrinsics, intrinsics, chunk_size=chunk_size,
                                         image_shape=image_shape):
            frame_seconds.append((time.perf_counter() - started) / chunk.color.shape[0])
            writer.write(chunk.color.clamp(0, 1))
            started = time.perf_counter()
    return frame_seconds


def write_outputs(model: InferenceModel, prediction: Prediction, capture: Capture, args, out: Path,
                  extra: tuple[list[str], torch.Tensor, torch.Tensor] | None) -> None:
    from .evaluation.media import find_ffmpeg

    height, width = prediction.image_shape
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prediction.save_ply(out / "gaussians.ply")
    print(f"gaussians: {prediction.gaussians.means.shape[1]:,} -> {out / 'gaussians.ply'} "
          f"({time.perf_counter() - started:.2f} s)")

    # Context views: the images the model saw and their depth.
    context_c2w, context_k = prediction.context_cameras()
    context_render = model.render(prediction, context_c2w, context_k, chunk_size=args.chunk_size)
    depth_ranges = {}
    for i, name in enumerate(prediction.names):
        save_png(prediction.context["image"][0, i].cpu(), out / "context" / f"{file_stem(name)}.png")
        depth_ranges[name] = save_depth(context_render.depth[i], out / "depth" / file_stem(name))

    # Renders at the cameras of other images (test mode's target path) and at extra cameras.
    if prediction.target_names:
        targets = model.render_targets(prediction, chunk_size=args.chunk_size)
        for i, name in enumerate(prediction.target_names):
            save_png(targets.color[i], out / "renders" / f"{file_stem(name)}.png")
            np.save(out / "renders" / f"{file_stem(name)}_depth.npy", targets.depth[i].numpy())
    if extra is not None:
        names, extrinsics, intrinsics = extra
        rendered = model.render(prediction, extrinsics, intrinsics, chunk_size=args.chunk_size)
        for i, name in enumerate(names):
            save_png(rendered.color[i], out / "renders" / f"{file_stem(name)}.png")
            np.save(out / "renders" / f"{file_stem(name)}_depth.npy", rendered.depth[i].numpy())

    # The fly-through, chunk by chunk.
    path_c2w, path_k = trajectory(args.trajectory, context_c2w, context_k, args.frames)
    video = out / f"video.{args.video_format}"
    if args.video_format == "mp4" and find_ffmpeg() is None:
        video = out / "video.gif"
        print("video: no ffmpeg binary found (pip install imageio-ffmpeg), writing a GIF instead")
    video_shape = tuple(args.video_shape) if args.video_shape else (height, width)
    frame_seconds = write_video(model, prediction, path_c2w, path_k, video, fps=args.fps, chunk_size=args.chunk_size,
                                image_shape=video_shape)
    (out / "trajectory.json").write_text(json.dumps({
        "trajectory": args.trajectory, "fps": args.fps, "image_shape": list(video_shape),
        "convention": "c2w: camera-to-world, OpenCV axes, world units of the input; K: normalised for the image",
        "frames": camera_records(path_c2w, path_k)}, indent=1))
    print(f"video: {args.frames} frames ({args.trajectory}) at {video_shape[1]}x{video_shape[0]}, {args.fps} fps -> {video}; "
          f"rendering {1000 * sum(frame_seconds) / len(frame_seconds):.1f} ms/frame on average "
          f"(first chunk {1000 * frame_seconds[0]:.1f}, last {1000 * frame_seconds[-1]:.1f}), chunks of "
          f"{args.chunk_size}")

    context = prediction.context
    (out / "scene.json").write_text(json.dumps({
        "checkpoint": str(Path(args.checkpoint).resolve()), "source": capture.description,
        "image_shape": [height, width], "scale": prediction.scale,
        "near": float(context["near"][0, 0]) * prediction.scale, "far": float(context["far"][0, 0]) * prediction.scale,
        "context": camera_records(context_c2w, context_k, prediction.names),
        "depth_png_ranges": depth_ranges, "renders": prediction.target_names + (extra[0] if extra else []),
        "convention": "c2w: camera-to-world, OpenCV axes (+x right, +y down, +z forward), world units of the input; "
                      "K: normalised (fx, cx / width; fy, cy / height) for the image_shape renders",
    }, indent=1))


# ---- the command -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fabric-mvsplat-render", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt a training run wrote")
    parser.add_argument("--output", "-o", required=True, help="a new (or empty) folder for the results")
    source = parser.add_argument_group("the images and cameras (one of)")
    source.add_argument("--colmap", type=Path, help="a COLMAP model folder (sparse/0, or sparse/ with several)")
    source.add_argument("--images", type=Path, help="with --colmap: the folder of its images")
    source.add_argument("--chunks", type=Path, help="a chunk dataset root (with --scene)")
    source.add_argument("--scene", help="with --chunks: the scene key; its frames are named 0, 1, ...")
    source.add_argument("--cameras", type=Path, help="a JSON of images with K and c2w (docs/inference.md)")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (default: beside the checkpoint or one "
                                                    "folder up)")
    parser.add_argument("--context", nargs="+", metavar="NAME", help="the context images (default: a well-spread "
                                                                      "set of dataset.view_sampler.num_context_views)")
    parser.add_argument("--render", nargs="+", default=[], metavar="NAME", help="also render at these images' cameras")
    parser.add_argument("--render-cameras", type=Path, help="also render at the cameras of this JSON (K for the "
                                                            "rendered image)")
    parser.add_argument("--trajectory", choices=TRAJECTORIES, default="interpolation")
    parser.add_argument("--frames", type=int, default=60, help="video frames (default 60)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--video-format", choices=("mp4", "gif"), default="mp4",
                        help="mp4 (H.264; a GIF when no ffmpeg is found) or gif")
    parser.add_argument("--video-shape", type=int, nargs=2, metavar=("H", "W"),
                        help="video frame size (default: the model's image size; same field of view)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="frames per decoder call")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    sources = [name for name in ("colmap", "chunks", "cameras") if getattr(args, name) is not None]
    if len(sources) != 1:
        parser.error("give exactly one of --colmap (with --images), --chunks (with --scene) or --cameras")
    if args.colmap is not None and args.images is None:
        parser.error("--colmap needs --images (the folder of the model's images)")
    if args.chunks is not None and args.scene is None:
        parser.error("--chunks needs --scene KEY")
    if args.video_shape is not None and min(args.video_shape) < 1:
        parser.error(f"--video-shape must be two positive integers H W, got {args.video_shape}")
    for flag in ("frames", "fps", "chunk_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    return args


def run(args: argparse.Namespace) -> Path:
    """Check every input, then predict and write; returns the output folder."""
    out = Path(args.output)
    refuse_existing_output(out)
    if args.colmap is not None:
        capture = capture_from_colmap(args.colmap, args.images)
    elif args.chunks is not None:
        capture = capture_from_chunks(args.chunks, args.scene)
    else:
        capture = capture_from_json(args.cameras)
    if len(capture.names) < 2:
        raise InputError(f"{capture.description} has {len(capture.names)} image(s) with a camera: the model needs "
                         "at least two views of the scene")
    check_cameras(capture.extrinsics, capture.intrinsics, capture.names)

    started = time.perf_counter()
    model = load_model(args.checkpoint, args.config, args.device)
    count = model.num_context_views
    if args.context:
        if len(set(args.context)) < 2:
            raise InputError(f"--context names {len(set(args.context))} image(s): give at least two")
        context = [capture.index_of(name, "--context") for name in args.context]
        chosen = "given"
    else:
        context = pick_context(capture.extrinsics, count)
        chosen = f"well-spread {len(context)} of {len(capture.names)}"
    targets = [capture.index_of(name, "--render") for name in args.render]
    frames = {i: capture.load_frame(i) for i in dict.fromkeys(context + targets)}
    print(f"model: {args.checkpoint} on {model.device} ({time.perf_counter() - started:.2f} s to load)")
    sizes = sorted({(f.width, f.height) for f in frames.values()})
    shape = model.preprocessing.image_shape
    if any((h, w) != shape for w, h in sizes):
        print(f"images: {', '.join(f'{w}x{h}' for w, h in sizes)} resized to cover the model's {shape[1]}x{shape[0]} "
              "and centre-cropped (as test mode)")

    started = time.perf_counter()
    prediction = model.predict_frames(frames, capture.extrinsics, capture.intrinsics, context, targets,
                                      capture.names, key=capture.description)
    encode_seconds = time.perf_counter() - started
    height, width = prediction.image_shape
    near, far = (float(prediction.context[k][0, 0]) * prediction.scale for k in ("near", "far"))
    print(f"context: {', '.join(prediction.names)} ({chosen}); near {near:.4g}, far {far:.4g} (world units; "
          f"baseline {prediction.scale:.4g}); image {width}x{height}")
    print(f"encoding: {encode_seconds:.2f} s")
    extra = extra_cameras(args.render_cameras, prediction.image_shape) if args.render_cameras else None
    write_outputs(model, prediction, capture, args, out, extra)
    print(f"results: {out}")
    print(f"look at them: python -m fabric_mvsplat.view {shlex.quote(str(out))}")
    return out


def main(argv: list[str] | None = None) -> None:
    """The one place this command's user errors end: one line, exit code 2."""
    args = parse_args(argv)
    try:
        run(args)
    except UserError as error:
        print(f"fabric_mvsplat.render: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
