"""Read and write the original (pixelSplat) on-disk chunk format.

Layout: ``<root>/<stage>/NNNNNN.torch`` + ``<root>/<stage>/index.json`` ({scene key: chunk file name}).
Each chunk is ``torch.save`` of a list of scene dicts::

    url         str
    timestamps  int64   [V]
    cameras     float32 [V, 18]  fx fy cx cy (normalised by W/H), 0 0, then the 3x4 OpenCV
                                 world-to-camera matrix, row-major
    images      list of V uint8 1-D tensors, each the raw JPEG/PNG file bytes
    key         str

Optional, written by our synthetic generator and ignored by the original's loader (it reads only the
keys above):

    depths      list of V uint8 1-D tensors, each a 16-bit grayscale PNG of the frame's z-depth
                (camera z, world units) in steps of DEPTH_UNIT = 1/1000 (depths up to 65.5, exact to
                5e-4; a few kB per 64x64 frame); 0 marks a pixel without depth
    file_names  list of V str (optional; written by the COLMAP converter, ignored by every reader,
                the original's included): the image file each frame index came from
"""

import io
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import safe_load

TARGET_BYTES_PER_CHUNK = 100_000_000
ROTATION_TOLERANCE = 1e-2  # max |R R^T - I| and |det R - 1| of a world-to-camera rotation
SCENE_KEYS = ("url", "timestamps", "cameras", "images", "key")
DEPTH_KEY = "depths"
DEPTH_UNIT = 1e-3  # world units per step of the 16-bit depth PNGs


class ChunkReadError(RuntimeError):
    """A chunk file cannot be loaded (truncated, garbage, or holds non-tensor objects)."""


def encode_image(image: np.ndarray | Tensor, format: str = "jpeg", quality: int = 95) -> Tensor:
    """uint8 [H, W, 3] -> the encoded file bytes as a uint8 1-D tensor."""
    array = image.numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"encode_image expects uint8 [H, W, 3], got {array.dtype} {list(array.shape)}")
    if format not in ("jpeg", "png"):
        raise ValueError(f"encode_image format={format!r}: expected 'jpeg' or 'png'")
    buffer = io.BytesIO()
    options = {"quality": quality} if format == "jpeg" else {}
    Image.fromarray(array).save(buffer, format=format.upper(), **options)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def decode_image(data: Tensor) -> Tensor:
    """Encoded bytes (uint8 1-D) -> float [3, H, W] in [0, 1]; raises on undecodable data."""
    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def encode_depth(depth: np.ndarray | Tensor) -> Tensor:
    """z-depth [H, W] (float, world units; <= 0 or non-finite = unknown) -> 16-bit PNG bytes (uint8 1-D)."""
    array = np.asarray(depth.numpy() if isinstance(depth, Tensor) else depth, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"encode_depth expects a [H, W] depth map, got shape {list(array.shape)}")
    known = np.isfinite(array) & (array > 0)
    if (array[known] / DEPTH_UNIT > 65535).any():
        raise ValueError(f"depth {array[known].max():.2f} exceeds the 16-bit PNG range {65535 * DEPTH_UNIT}")
    steps = np.where(known, np.round(np.where(known, array, 0) / DEPTH_UNIT), 0).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(steps).save(buffer, format="PNG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def decode_depth(data: Tensor) -> np.ndarray:
    """16-bit PNG bytes -> float32 [H, W] z-depth in world units; 0 where unknown."""
    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        steps = np.asarray(image, dtype=np.float32)
    if steps.ndim != 2:
        raise ValueError(f"a depth PNG must be single-channel, got shape {list(steps.shape)}")
    return steps * np.float32(DEPTH_UNIT)


def cameras_to_vector(w2c: Tensor, intrinsics: Tensor) -> Tensor:
    """OpenCV world-to-camera [V, 4, 4] or [V, 3, 4] + normalised K [V, 3, 3] -> [V, 18] float32."""
    w2c, intrinsics = torch.as_tensor(w2c), torch.as_tensor(intrinsics)
    if w2c.ndim != 3 or w2c.shape[1:] not in ((4, 4), (3, 4)) or intrinsics.shape != (w2c.shape[0], 3, 3):
        raise ValueError(f"cameras_to_vector expects w2c [V,4,4]|[V,3,4] and K [V,3,3], got "
                         f"{list(w2c.shape)} and {list(intrinsics.shape)}")
    k = intrinsics.double()
    fx_fy_cx_cy = torch.stack([k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]], dim=-1)
    zeros = torch.zeros_like(fx_fy_cx_cy[:, :2])
    return torch.cat([fx_fy_cx_cy, zeros, w2c[:, :3, :4].double().reshape(-1, 12)], dim=-1).float()


def vector_to_cameras(cameras: Tensor) -> tuple[Tensor, Tensor]:
    """[V, 18] -> (camera-to-world [V, 4, 4] OpenCV, normalised K [V, 3, 3]), as the original's convert_poses."""
    if cameras.ndim != 2 or cameras.shape[1] != 18:
        raise ValueError(f"cameras must be [V, 18], got {list(cameras.shape)}")
    num_views = cameras.shape[0]
    fx, fy, cx, cy = cameras[:, :4].float().T
    intrinsics = torch.eye(3).repeat(num_views, 1, 1)
    intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2], intrinsics[:, 1, 2] = fx, fy, cx, cy
    w2c = torch.eye(4).repeat(num_views, 1, 1)
    w2c[:, :3] = cameras[:, 6:].float().reshape(num_views, 3, 4)
    # numpy: tiny inverses on torch's OpenMP pool stall on a busy CPU (see shims.to_float_image)
    return torch.from_numpy(np.linalg.inv(w2c.double().numpy()).astype(np.float32)), intrinsics


def read_chunk(path: Path) -> list[dict]:
    """Load one chunk with weights_only=True (a pickle payload is refused, never executed)."""
    try:
        chunk = safe_load.load(path, "data chunk")
    except safe_load.FileLoadError as error:  # truncated zip, garbage bytes, forbidden globals, ...
        raise ChunkReadError(str(error)) from error
    if not isinstance(chunk, list) or not all(isinstance(scene, dict) for scene in chunk):
        raise ChunkReadError(f"chunk {path} holds {type(chunk).__name__}, expected a list of scene dicts")
    return chunk


def check_scene(scene: dict) -> None:
    """Raise ValueError naming the first field that does not match the chunk format."""
    missing = [key for key in SCENE_KEYS if key not in scene]
    if missing:
        raise ValueError(f"scene {scene.get('key', '?')!r} lacks {missing}")
    cameras, images = scene["cameras"], scene["images"]
    if not isinstance(cameras, Tensor) or cameras.ndim != 2 or cameras.shape[1] != 18:
        raise ValueError(f"scene {scene['key']!r}: cameras must be a [V, 18] tensor, "
                         f"got {getattr(cameras, 'shape', type(cameras).__name__)}")
    if not isinstance(images, list) or len(images) != cameras.shape[0]:
        raise ValueError(f"scene {scene['key']!r}: images must be a list of {cameras.shape[0]} byte tensors")
    if any(not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.ndim != 1 for image in images):
        raise ValueError(f"scene {scene['key']!r}: every image must be a uint8 1-D tensor of file bytes")
    if not isinstance(scene["timestamps"], Tensor) or scene["timestamps"].shape != (cameras.shape[0],):
        raise ValueError(f"scene {scene['key']!r}: timestamps must be a [V] tensor")


def camera_problem(cameras: Tensor) -> str | None:
    """What makes a [V, 18] camera tensor unusable (first bad view), or None.

    Non-finite values, a focal length <= 0, or a world-to-camera rotation that is not a rotation (singular,
    scaled, sheared or mirrored) would give NaN poses or a crash when the pose is inverted.
    """
    values = cameras.detach().double().numpy()
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        view = int(np.argmin(finite))
        return f"view {view} has non-finite camera values {values[view].tolist()}"
    focal = values[:, :2]
    if (focal <= 0).any():
        view = int(np.argmax((focal <= 0).any(axis=1)))
        return f"view {view} has focal length fx, fy = {focal[view].tolist()} (must be > 0)"
    determinant, off = rotation_defects(torch.from_numpy(values[:, 6:].reshape(-1, 3, 4)[:, :, :3]))
    bad = (off > ROTATION_TOLERANCE) | ((determinant - 1).abs() > ROTATION_TOLERANCE)
    if bad.any():
        view = int(bad.int().argmax())
        return (f"view {view}'s world-to-camera rotation is not a rotation (det {float(determinant[view]):.3g}, "
                f"max |R R^T - I| {float(off[view]):.3g}, tolerance {ROTATION_TOLERANCE})")
    return None


def rotation_defects(rotation: Tensor) -> tuple[Tensor, Tensor]:
    """[..., 3, 3] -> (det R, max |R R^T - I|) [...] in float64: 1 and 0 for a rotation, det < 0 mirrored."""
    rotation = rotation.double()
    off = (rotation @ rotation.transpose(-1, -2) - torch.eye(3, dtype=torch.float64)).abs().amax((-1, -2))
    return torch.linalg.det(rotation), off


def _scene_bytes(scene: dict) -> int:
    depths = sum(depth.numel() for depth in scene.get(DEPTH_KEY, []))
    return sum(image.numel() for image in scene["images"]) + scene["cameras"].numel() * 4 + depths


def write_chunks(scenes: Iterable[dict], stage_dir: Path, target_bytes: int = TARGET_BYTES_PER_CHUNK) -> dict[str, str]:
    """Write scenes as NNNNNN.torch chunks of about target_bytes each plus index.json; return the index.

    Like the original converter, a chunk is closed once its size reaches target_bytes.
    """
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, str] = {}
    chunk: list[dict] = []
    chunk_bytes = 0

    def flush() -> None:
        nonlocal chunk, chunk_bytes
        name = f"{len(set(index.values())):0>6}.torch"
        torch.save(chunk, stage_dir / name)
        index.update({scene["key"]: name for scene in chunk})
        chunk, chunk_bytes = [], 0

    for scene in scenes:
        check_scene(scene)
        if scene["key"] in index or any(s["key"] == scene["key"] for s in chunk):
            raise ValueError(f"duplicate scene key {scene['key']!r} in {stage_dir}")
        extra = {DEPTH_KEY: list(scene[DEPTH_KEY])} if DEPTH_KEY in scene else {}
        file_names = scene.get("file_names")
        scene = {"url": str(scene["url"]), "timestamps": scene["timestamps"].to(torch.int64),
                 "cameras": scene["cameras"].to(torch.float32), "images": list(scene["images"]),
                 "key": str(scene["key"]), **extra}
        if file_names is not None:
            if len(file_names) != len(scene["images"]):
                raise ValueError(f"scene {scene['key']!r}: {len(file_names)} file_names for {len(scene['images'])} images")
            scene["file_names"] = [str(name) for name in file_names]
        chunk.append(scene)
        chunk_bytes += _scene_bytes(scene)
        if chunk_bytes >= target_bytes:
            flush()
    if chunk:
        flush()
    (stage_dir / "index.json").write_text(json.dumps(index, indent=1))
    return index
