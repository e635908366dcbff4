"""A COLMAP sparse model + its images -> one scene of the chunk format.

Reads `cameras`, `images` and (for the depth range) `points3D` as .txt or .bin. COLMAP stores
world-to-camera poses (qvec = w, x, y, z; tvec) in the OpenCV camera convention and puts the centre
of the top-left pixel at (0.5, 0.5), so dividing fx, cx by the width and fy, cy by the height gives
exactly the chunk format's normalized intrinsics. Only pinhole cameras are accepted: the model
assumes undistorted images.

Bookkeeping: given `sparse/` holding several models, the one with the most registered images is
used; frames are sorted naturally by file name (frame2 before frame10) and each scene stores its
`file_names`, so a frame index maps back to its image; each scene's depth range is measured from the
sparse points every camera sees.
"""

import json
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .chunk_io import TARGET_BYTES_PER_CHUNK, cameras_to_vector, encode_image
from .convert_realestate10k import refuse_existing_chunks, write_stage

# fx and fy of a PINHOLE/OPENCV camera may differ by this fraction before the converter warns: real
# sensors have square pixels, so a larger gap usually means a bundle adjustment that drifted.
FOCAL_MISMATCH_WARNING = 0.03
# Depth range reported per scene: these percentiles of the z-depths of the sparse points each camera sees.
DEPTH_PERCENTILES = (1.0, 99.0)
DEPTH_RANGES_FILE = "depth_ranges.json"  # written into each stage folder, beside index.json (readers ignore it)

# id -> (name, number of params), as in COLMAP's camera model definitions.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
# Models that are pinhole once their distortion coefficients (params[first_distortion:]) are zero.
PINHOLE_COMPATIBLE = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 3, "RADIAL": 3, "OPENCV": 4}


@dataclass
class ColmapCamera:
    model: str
    width: int
    height: int
    params: list[float]


@dataclass
class ColmapImage:
    qvec: np.ndarray  # [4] w, x, y, z (world-to-camera rotation)
    tvec: np.ndarray  # [3]
    camera_id: int
    name: str
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids of the points it sees


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            values = line.split()
            cameras[int(values[0])] = ColmapCamera(values[1], int(values[2]), int(values[3]),
                                                   [float(v) for v in values[4:]])
    return cameras


def read_images_text(path: Path) -> list[ColmapImage]:
    """Two lines per image: the pose line, then its 2D points `x y point3D_id ...` (possibly empty)."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    images, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        values = lines[i].split(maxsplit=9)
        points = lines[i + 1].split() if i + 1 < len(lines) else []
        ids = np.array([int(v) for v in points[2::3]], dtype=np.int64)
        images.append(ColmapImage(np.array([float(v) for v in values[1:5]]), np.array([float(v) for v in values[5:8]]),
                                  int(values[8]), values[9].strip(), ids[ids >= 0]))
        i += 2
    return images


def read_points_text(path: Path) -> dict[int, np.ndarray]:
    points = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            values = line.split(maxsplit=4)
            points[int(values[0])] = np.array([float(v) for v in values[1:4]])
    return points


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    data, cameras = path.read_bytes(), {}
    (count,), offset = struct.unpack_from("<Q", data, 0), 8
    for _ in range(count):
        camera_id, model_id, width, height = struct.unpack_from("<iiQQ", data, offset)
        offset += 24
        if model_id not in CAMERA_MODELS:
            raise ValueError(f"{path}: unknown COLMAP camera model id {model_id}")
        name, num_params = CAMERA_MODELS[model_id]
        params = list(struct.unpack_from(f"<{num_params}d", data, offset))
        offset += 8 * num_params
        cameras[camera_id] = ColmapCamera(name, width, height, params)
    return cameras


def read_images_binary(path: Path) -> list[ColmapImage]:
    data, images = path.read_bytes(), []
    (count,), offset = struct.unpack_from("<Q", data, 0), 8
    for _ in range(count):
        values = struct.unpack_from("<i7di", data, offset)
        offset += 4 + 7 * 8 + 4
        end = data.index(b"\x00", offset)
        name = data[offset:end].decode()
        (num_points,) = struct.unpack_from("<Q", data, end + 1)
        offset = end + 1 + 8
        # x, y (double) + point3D id (int64) per point
        points = np.frombuffer(data, dtype=np.dtype([("xy", "<f8", 2), ("id", "<i8")]), count=num_points, offset=offset)
        offset += num_points * 24
        ids = points["id"].astype(np.int64)
        images.append(ColmapImage(np.array(values[1:5]), np.array(values[5:8]), values[8], name, ids[ids >= 0]))
    return images


def read_points_binary(path: Path) -> dict[int, np.ndarray]:
    data, points = path.read_bytes(), {}
    (count,), offset = struct.unpack_from("<Q", data, 0), 8
    for _ in range(count):
        point_id, x, y, z = struct.unpack_from("<Q3d", data, offset)
        (track_length,) = struct.unpack_from("<Q", data, offset + 8 + 24 + 3 + 8)  # after rgb (3 B) and error
        offset += 8 + 24 + 3 + 8 + 8 + track_length * 8  # track: (image id, point2D index) int32 pairs
        points[point_id] = np.array([x, y, z])
    return points


MODEL_FILES = {".txt": (read_cameras_text, read_images_text, read_points_text),
               ".bin": (read_cameras_binary, read_images_binary, read_points_binary)}


def model_suffix(model_dir: Path) -> str | None:
    """'.txt' or '.bin' for a folder holding a model (text preferred: it is what users edit), else None."""
    for suffix in MODEL_FILES:
        if (model_dir / f"cameras{suffix}").is_file() and (model_dir / f"images{suffix}").is_file():
            return suffix
    return None


def read_model(model_dir: Path) -> tuple[dict[int, ColmapCamera], list[ColmapImage], dict[int, np.ndarray] | None]:
    """-> cameras, images, 3D points (None when the model has no points3D file)."""
    model_dir = Path(model_dir)
    suffix = model_suffix(model_dir)
    if suffix is None:
        raise FileNotFoundError(f"no COLMAP model in {model_dir}: expected cameras.txt + images.txt or "
                                "cameras.bin + images.bin (e.g. DIR/sparse/0)")
    read_cameras, read_images, read_points = MODEL_FILES[suffix]
    points_file = model_dir / f"points3D{suffix}"
    try:
        return (read_cameras(model_dir / f"cameras{suffix}"), read_images(model_dir / f"images{suffix}"),
                read_points(points_file) if points_file.is_file() else None)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot parse the COLMAP model in {model_dir}: {type(error).__name__}: {error}") from None


def read_registered_images(model_dir: Path) -> list[ColmapImage]:
    suffix = model_suffix(model_dir)
    try:
        return MODEL_FILES[suffix][1](model_dir / f"images{suffix}")
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot parse {model_dir / f'images{suffix}'}: {type(error).__name__}: {error}") from None


def natural_key(name: str) -> list:
    """frame2 < frame10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def choose_model(path: Path) -> tuple[Path, str]:
    """A model folder, or a `sparse/` folder of numbered models -> (the model with the most registered images,
    a line saying which one was chosen among which)."""
    path = Path(path)
    if model_suffix(path) is not None:
        return path, f"{path}: one model"
    candidates = sorted((d for d in path.iterdir() if d.is_dir() and model_suffix(d) is not None),
                        key=lambda d: natural_key(d.name)) if path.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"no COLMAP model in {path} or its subfolders: expected cameras.txt + images.txt "
                                "or cameras.bin + images.bin (e.g. SCENE/sparse or SCENE/sparse/0)")
    counts = {d: len(read_registered_images(d)) for d in candidates}
    best = max(candidates, key=lambda d: counts[d])  # first of the largest on ties
    listing = ", ".join(f"{d.name}: {counts[d]} images" for d in candidates)
    return best, f"{path}: {len(candidates)} models ({listing}); using the largest, {best}"


def normalized_intrinsics(camera: ColmapCamera, camera_id: int) -> np.ndarray:
    """-> K [3, 3] with fx, cx divided by the width and fy, cy by the height."""
    if camera.model not in PINHOLE_COMPATIBLE or any(abs(k) > 1e-9 for k in camera.params[PINHOLE_COMPATIBLE[camera.model]:]):
        raise ValueError(
            f"COLMAP camera {camera_id} uses model {camera.model} with distortion {camera.params}: only "
            "PINHOLE/SIMPLE_PINHOLE (or distortion-free SIMPLE_RADIAL/RADIAL/OPENCV) are supported. "
            "Undistort first: colmap image_undistorter --image_path IMAGES --input_path SPARSE/0 "
            "--output_path OUT --output_type COLMAP, then convert OUT/sparse and OUT/images.")
    if camera.model in ("PINHOLE", "OPENCV"):
        fx, fy, cx, cy = camera.params[:4]
    else:  # one focal length: f, cx, cy
        (fx, cx, cy), fy = camera.params[:3], camera.params[0]
    return np.array([[fx / camera.width, 0.0, cx / camera.width], [0.0, fy / camera.height, cy / camera.height],
                     [0.0, 0.0, 1.0]])


def focal_mismatch(camera: ColmapCamera) -> float:
    """How much the larger of fx, fy (pixels) exceeds the smaller, as a fraction (0 for one-focal models)."""
    if camera.model not in ("PINHOLE", "OPENCV"):
        return 0.0
    fx, fy = camera.params[:2]
    return max(fx, fy) / min(fx, fy) - 1.0


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def image_bytes(path: Path, camera: ColmapCamera) -> torch.Tensor:
    """JPEG/PNG file bytes unchanged; other formats re-encoded as PNG. Checks the aspect ratio."""
    if not path.exists():
        raise FileNotFoundError(f"image {path} listed in the COLMAP model does not exist")
    with Image.open(path) as image:
        width, height = image.size
        if abs(width / height - camera.width / camera.height) > 0.01:
            raise ValueError(f"{path} is {width}x{height} but its COLMAP camera is {camera.width}x{camera.height}: "
                             "the intrinsics would not match (resize uniformly or re-run COLMAP)")
        if image.format in ("JPEG", "PNG"):
            return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return encode_image(np.asarray(image.convert("RGB")), format="png")


@dataclass
class DepthRange:
    """z-depths (COLMAP units) of the sparse points the scene's cameras see, over all (camera, point) pairs."""

    observations: int
    low: float  # DEPTH_PERCENTILES[0]
    high: float  # DEPTH_PERCENTILES[1]
    minimum: float
    maximum: float
    mean_step: float  # mean distance between consecutive camera centres (frame order)

    def scaled(self, scale: float) -> "DepthRange":
        return DepthRange(self.observations, self.low * scale, self.high * scale, self.minimum * scale,
                          self.maximum * scale, self.mean_step * scale)


def depth_range(w2c: np.ndarray, images: list[ColmapImage], points: dict[int, np.ndarray] | None) -> DepthRange | None:
    """w2c [V, 4, 4] in the order of `images`. None without points3D or observations."""
    if points is None:
        return None
    depths = []
    for pose, image in zip(w2c, images):
        seen = [points[i] for i in image.point3d_ids.tolist() if i in points]
        if seen:
            depths.append((np.stack(seen) @ pose[2, :3]) + pose[2, 3])
    if not depths:
        return None
    depths = np.concatenate(depths)
    centres = -np.einsum("vji,vj->vi", w2c[:, :3, :3], w2c[:, :3, 3])  # -R^T t
    step = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).mean()) if len(centres) > 1 else 0.0
    low, high = np.percentile(depths, DEPTH_PERCENTILES)
    return DepthRange(len(depths), float(low), float(high), float(depths.min()), float(depths.max()), step)


@dataclass
class ColmapScene:
    scene: dict  # the chunk-format scene dict (with file_names)
    depth: DepthRange | None
    model_dir: Path
    note: str  # which model was chosen


def colmap_scene(model_dir: Path, images_dir: Path, key: str) -> ColmapScene:
    """One scene; frames sorted naturally by image name, timestamps = frame numbers."""
    model_dir, note = choose_model(model_dir)
    cameras, images, points = read_model(model_dir)
    if not images:
        raise ValueError(f"the COLMAP model in {model_dir} has no registered images")
    images = sorted(images, key=lambda image: natural_key(image.name))
    w2c, intrinsics, files = [], [], []
    for image in images:
        if image.camera_id not in cameras:
            raise ValueError(f"{model_dir}: image {image.name} refers to missing camera {image.camera_id}")
        camera = cameras[image.camera_id]
        intrinsics.append(normalized_intrinsics(camera, image.camera_id))
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = quaternion_to_rotation(image.qvec), image.tvec
        w2c.append(pose)
        files.append(image_bytes(Path(images_dir) / image.name, camera))
    for camera_id, camera in sorted(cameras.items()):
        if focal_mismatch(camera) > FOCAL_MISMATCH_WARNING:
            warnings.warn(f"{model_dir}: {camera.model} camera {camera_id} has fx = {camera.params[0]:.1f} and "
                          f"fy = {camera.params[1]:.1f} pixels (one {100 * focal_mismatch(camera):.0f}% larger; square "
                          "pixels would give equal values): bundle adjustment may have drifted; consider re-running "
                          "COLMAP with a shared SIMPLE_PINHOLE/SIMPLE_RADIAL camera")
    w2c = np.stack(w2c)
    depth = depth_range(w2c, images, points)
    scene = {
        "url": str(images_dir),
        "timestamps": torch.arange(len(images), dtype=torch.int64),
        "cameras": cameras_to_vector(torch.tensor(w2c), torch.tensor(np.stack(intrinsics))),
        "images": files,
        "key": key,
        "file_names": [image.name for image in images],
    }
    return ColmapScene(scene, depth, model_dir, note)


def split_frames(scene: dict, test_fraction: float) -> tuple[dict, dict]:
    """The last `test_fraction` of the frames (in name order) -> test, the rest -> train: contiguous runs,
    so that both keep the video-like order the view samplers assume."""
    count = len(scene["images"])
    num_test = int(round(count * test_fraction))
    if not 0 < num_test < count:
        raise ValueError(f"scene {scene['key']!r}: --test-fraction {test_fraction} of {count} frames leaves "
                         "an empty train or test part")
    parts = []
    for frames in (slice(0, count - num_test), slice(count - num_test, count)):
        part = {**scene, "cameras": scene["cameras"][frames], "images": scene["images"][frames],
                "file_names": scene["file_names"][frames]}
        part["timestamps"] = torch.arange(len(part["images"]), dtype=torch.int64)
        parts.append(part)
    return parts[0], parts[1]


def suggestion(ranges: dict[str, DepthRange], gap: int = 10) -> str:
    """Fixed near/far covering every scene's depth range, and the same depths in context baselines."""
    low, high = min(r.low for r in ranges.values()), max(r.high for r in ranges.values())
    fixed = (f"fixed bounds covering every scene: dataset.make_baseline_1=false dataset.near={0.8 * low:.3g} "
             f"dataset.far={1.25 * high:.3g}")
    widest = max(r.high / r.low for r in ranges.values())
    if high / low > 2 * widest:
        fixed += (f" (the scenes' depths are {high / low:.3g}x apart overall but at most {widest:.3g}x within a scene: "
                  "their scales differ, as separate COLMAP reconstructions do; --fit-near-far rescales each scene)")
    steps = [r.mean_step for r in ranges.values() if r.mean_step > 0]
    if not steps:
        return fixed
    in_baselines = (min(r.low / r.mean_step for r in ranges.values() if r.mean_step > 0) / gap,
                    max(r.high / r.mean_step for r in ranges.values() if r.mean_step > 0) / gap)
    return (f"{fixed}; or dataset.make_baseline_1=true dataset.baseline_scale_bounds=false, which measures depth in "
            f"context baselines: with contexts {gap} frames apart the depths are about {in_baselines[0]:.3g}-"
            f"{in_baselines[1]:.3g} baselines, to be covered by dataset.near/far")


@dataclass(frozen=True)
class Destination:
    """Where converted scenes go: either `out` (one stage folder, reported under its name) or `root` with a split:
    `test_keys` (those scenes -> root/test, the rest -> root/train) or `test_fraction` (each scene's last frames
    -> root/test, the others -> root/train)."""

    out: Path | None = None
    root: Path | None = None
    test_keys: list[str] | None = None
    test_fraction: float | None = None


def convert_colmap(model_dirs: list[Path], images_dirs: list[Path], keys: list[str], destination: Destination, *,
                   target_bytes: int = TARGET_BYTES_PER_CHUNK, scale: float = 1.0,
                   fit_near_far: tuple[float, float] | None = None, report=print) -> dict[str, dict[str, str]]:
    """Each (model, images, key) triple becomes one scene.

    -> {stage: {key: chunk file}}. `scale` multiplies every translation; `fit_near_far` instead
    scales each scene so that its 1st-percentile depth is near (each reconstruction has its own arbitrary scale).
    Each stage folder also gets `depth_ranges.json` (after scaling) for its scenes.
    """
    out, root = destination.out, destination.root
    test_keys, test_fraction = destination.test_keys, destination.test_fraction
    if not len(model_dirs) == len(images_dirs) == len(keys):
        raise ValueError(f"got {len(model_dirs)} --model, {len(images_dirs)} --images and {len(keys)} --key: "
                         "give one of each per scene")
    if len(set(keys)) != len(keys):
        raise ValueError(f"--key values must be unique, got {keys}")
    if (out is None) == (root is None):
        raise ValueError("give either --out STAGE_FOLDER or --root DATASET_FOLDER with --test-keys/--test-fraction")
    if root is not None and (test_keys is None) == (test_fraction is None):
        raise ValueError("--root needs exactly one of --test-keys or --test-fraction to split train/ and test/")
    if test_keys is not None and not set(test_keys) <= set(keys):
        raise ValueError(f"--test-keys {sorted(set(test_keys) - set(keys))} are not among the --key values {keys}")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction {test_fraction} must be in (0, 1)")
    if scale <= 0:
        raise ValueError(f"--scale {scale} must be positive")
    for images_dir in images_dirs:
        if not Path(images_dir).is_dir():
            raise FileNotFoundError(f"images folder {images_dir} does not exist")
    stages = {Path(out).name: Path(out)} if out is not None else {"train": Path(root) / "train", "test": Path(root) / "test"}
    for stage_dir in stages.values():
        refuse_existing_chunks(stage_dir)

    # Every scene is read and checked before anything is written (the images are held in memory).
    converted = [colmap_scene(m, i, k) for m, i, k in zip(model_dirs, images_dirs, keys)]
    for c in converted:
        report(f"{c.scene['key']}: {c.note}; {len(c.scene['images'])} frames "
               f"({c.scene['file_names'][0]} .. {c.scene['file_names'][-1]})")
    ranges = {c.scene["key"]: c.depth for c in converted if c.depth is not None}
    # Every COLMAP reconstruction has its own arbitrary scale: fitting is per scene.
    scales = {c.scene["key"]: scale for c in converted}
    if fit_near_far is not None:
        near, far = fit_near_far
        if not 0 < near < far:
            raise ValueError(f"--fit-near-far {near} {far}: need 0 < near < far")
        unmeasured = [c.scene["key"] for c in converted if c.depth is None]
        if unmeasured:
            raise ValueError(f"--fit-near-far needs the depths of every scene, but the models of {unmeasured} have "
                             "no points3D file or no observed points")
        scales = {key: near / r.low for key, r in ranges.items()}
        for key, r in ranges.items():
            if r.high / r.low > far / near:
                warnings.warn(f"scene {key}: its depth ratio ({r.high / r.low:.3g}, percentiles "
                              f"{DEPTH_PERCENTILES[0]:g}-{DEPTH_PERCENTILES[1]:g}) exceeds far/near = {far / near:.3g}: "
                              "the farthest points lie beyond far")
    for c in converted:
        key = c.scene["key"]
        if scales[key] != 1.0:
            report(f"{key}: scaling every translation by {scales[key]:.6g}")
            c.scene["cameras"][:, [9, 13, 17]] *= scales[key]  # t of the row-major 3x4 world-to-camera matrix
            if key in ranges:
                ranges[key] = ranges[key].scaled(scales[key])
    for key, r in ranges.items():
        report(f"{key}: depth of the sparse points seen by each camera: percentiles {DEPTH_PERCENTILES[0]:g}-"
               f"{DEPTH_PERCENTILES[1]:g} = {r.low:.3g}-{r.high:.3g} (min {r.minimum:.3g}, max "
               f"{r.maximum:.3g}; {r.observations} observations); mean step between frames {r.mean_step:.3g}")
    missing = [c.scene["key"] for c in converted if c.depth is None]
    if missing:
        report(f"no depth range for {missing}: their models have no points3D file or no observed points")
    if ranges:
        report(suggestion(ranges))

    if out is not None:
        parts = {Path(out).name: [c.scene for c in converted]}
    elif test_keys is not None:
        parts = {"train": [c.scene for c in converted if c.scene["key"] not in test_keys],
                 "test": [c.scene for c in converted if c.scene["key"] in test_keys]}
        if not parts["train"]:
            raise ValueError("--test-keys names every scene: nothing is left for train/")
    else:
        split = [split_frames(c.scene, test_fraction) for c in converted]
        parts = {"train": [train for train, _ in split], "test": [test for _, test in split]}
    index = {}
    for stage, scenes in parts.items():
        stage_ranges = {s["key"]: {"low": ranges[s["key"]].low, "high": ranges[s["key"]].high,
                                   "min": ranges[s["key"]].minimum, "max": ranges[s["key"]].maximum,
                                   "percentiles": list(DEPTH_PERCENTILES), "scale": scales[s["key"]],
                                   "mean_step": ranges[s["key"]].mean_step} for s in scenes if s["key"] in ranges}
        extra = {DEPTH_RANGES_FILE: json.dumps(stage_ranges, indent=1)} if stage_ranges else None
        index[stage] = written = write_stage(scenes, stages[stage], target_bytes=target_bytes, extra_files=extra)
        report(f"wrote {len(written)} scenes in {len(set(written.values()))} chunks + index.json"
               f"{' + ' + DEPTH_RANGES_FILE if extra else ''} to {stages[stage]}")
    return index
