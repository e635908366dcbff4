"""A COLMAP sparse model + its images -> one scene of the chunk format.

Reads `cameras.txt`/`images.txt` or `cameras.bin`/`images.bin`. COLMAP stores world-to-camera
poses (qvec = w, x, y, z; tvec) in the OpenCV camera convention and puts the centre of the
top-left pixel at (0.5, 0.5), so dividing fx, cx by the width and fy, cy by the height gives
exactly the chunk format's normalized intrinsics. Only pinhole cameras are accepted: the model
assumes undistorted images.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .chunk_io import TARGET_BYTES_PER_CHUNK, cameras_to_vector, encode_image, write_chunks
from .convert_realestate10k import refuse_existing_chunks

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


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            values = line.split()
            cameras[int(values[0])] = ColmapCamera(values[1], int(values[2]), int(values[3]),
                                                   [float(v) for v in values[4:]])
    return cameras


def read_images_text(path: Path) -> list[ColmapImage]:
    """Two lines per image: the pose line, then its 2D points (possibly empty)."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    images, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        values = lines[i].split(maxsplit=9)
        images.append(ColmapImage(np.array([float(v) for v in values[1:5]]), np.array([float(v) for v in values[5:8]]),
                                  int(values[8]), values[9].strip()))
        i += 2  # skip the points line
    return images


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
        offset = end + 1 + 8 + num_points * 24  # x, y (double) + point3D id (int64) per point
        images.append(ColmapImage(np.array(values[1:5]), np.array(values[5:8]), values[8], name))
    return images


def read_model(model_dir: Path) -> tuple[dict[int, ColmapCamera], list[ColmapImage]]:
    """Prefer the text model when both exist (it is what users edit)."""
    model_dir = Path(model_dir)
    for suffix, read_cameras, read_images in ((".txt", read_cameras_text, read_images_text),
                                              (".bin", read_cameras_binary, read_images_binary)):
        cameras_file, images_file = model_dir / f"cameras{suffix}", model_dir / f"images{suffix}"
        if cameras_file.exists() and images_file.exists():
            return read_cameras(cameras_file), read_images(images_file)
    raise FileNotFoundError(f"no COLMAP model in {model_dir}: expected cameras.txt + images.txt or "
                            "cameras.bin + images.bin (e.g. DIR/sparse/0)")


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


def colmap_scene(model_dir: Path, images_dir: Path, key: str) -> dict:
    """One scene dict; frames sorted by image name, timestamps = frame numbers."""
    cameras, images = read_model(model_dir)
    if not images:
        raise ValueError(f"the COLMAP model in {model_dir} has no registered images")
    images = sorted(images, key=lambda image: image.name)
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
    return {
        "url": "",
        "timestamps": torch.arange(len(images), dtype=torch.int64),
        "cameras": cameras_to_vector(torch.tensor(np.stack(w2c)), torch.tensor(np.stack(intrinsics))),
        "images": files,
        "key": key,
    }


def convert_colmap(model_dirs: list[Path], images_dirs: list[Path], keys: list[str], out: Path,
                   target_bytes: int = TARGET_BYTES_PER_CHUNK) -> dict[str, str]:
    """Each (model, images, key) triple becomes one scene in the stage folder `out`. -> index."""
    if not len(model_dirs) == len(images_dirs) == len(keys):
        raise ValueError(f"got {len(model_dirs)} --model, {len(images_dirs)} --images and {len(keys)} --key: "
                         "give one of each per scene")
    for images_dir in images_dirs:
        if not Path(images_dir).is_dir():
            raise FileNotFoundError(f"images folder {images_dir} does not exist")
    refuse_existing_chunks(out)
    scenes = (colmap_scene(m, i, k) for m, i, k in zip(model_dirs, images_dirs, keys))
    return write_chunks(scenes, out, target_bytes=target_bytes)
