"""RealEstate10K / ACID camera files + extracted frames -> chunks (as the original's conversion tool).

Camera file `<key>.txt`: the first line is the YouTube URL, then one line per frame:
`timestamp fx fy cx cy 0 0 r11 r12 r13 t1 r21 ... t3` (normalized intrinsics, 3x4 OpenCV
world-to-camera, row-major) — exactly the 18-vector of the chunk format after the timestamp.
Frames: `<frames>/<key>/<timestamp>.png|jpg|jpeg`; the file bytes are stored unchanged.
"""

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import torch
from tqdm import tqdm

from ..errors import OverwriteRefused
from .chunk_io import TARGET_BYTES_PER_CHUNK, write_chunks

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def refuse_existing_chunks(out: Path) -> None:
    """Converters write NNNNNN.torch from 000000: never overwrite a stage that already holds data."""
    out = Path(out)
    if any(out.glob("*.torch")) or (out / "index.json").exists():
        raise OverwriteRefused(f"{out} already holds chunks or an index.json: choose an empty output folder")
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise OverwriteRefused(f"{out} exists and is not an empty folder: choose an empty or new output folder")


def write_stage(scenes: Iterable[dict], out: Path, target_bytes: int = TARGET_BYTES_PER_CHUNK,
                extra_files: dict[str, str] | None = None) -> dict[str, str]:
    """write_chunks (plus `extra_files`, {name: text}) into a hidden sibling folder renamed to `out` at the end:
    an interrupted or refused conversion leaves no half-written stage behind (and `out`, if it existed, was empty)."""
    out = Path(out)
    refuse_existing_chunks(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        index = write_chunks(scenes, staging, target_bytes=target_bytes)
        if not index:
            raise FileNotFoundError(f"no scene could be converted into {out} (see the warnings above)")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        os.replace(staging, out)  # atomic; replaces an empty folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return index


def read_camera_file(path: Path) -> tuple[str, torch.Tensor, torch.Tensor]:
    """-> url, timestamps int64 [V], cameras float32 [V, 18]."""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty: expected a URL line followed by one line per frame")
    url, timestamps, cameras = lines[0], [], []
    for number, line in enumerate(lines[1:], start=2):
        values = line.split()
        if len(values) != 19:
            raise ValueError(f"{path}:{number} has {len(values)} values, expected 19 "
                             "(timestamp fx fy cx cy 0 0 + 12 values of the 3x4 world-to-camera matrix)")
        try:
            timestamps.append(int(values[0]))
            cameras.append([float(v) for v in values[1:]])
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from error
    return url, torch.tensor(timestamps, dtype=torch.int64), torch.tensor(cameras, dtype=torch.float32)


def frame_files(frames_dir: Path) -> dict[int, Path]:
    """timestamp -> image file in one scene's frame folder."""
    return {int(p.stem): p for p in frames_dir.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.lstrip("-").isdigit()}


def load_scene(camera_file: Path, frames_root: Path) -> dict | None:
    """One scene dict, keeping only the frames whose image exists; None (with a warning) if none do."""
    key = camera_file.stem
    url, timestamps, cameras = read_camera_file(camera_file)
    frames_dir = frames_root / key
    if not frames_dir.is_dir():
        warnings.warn(f"skipping scene {key}: no frame folder {frames_dir}")
        return None
    files = frame_files(frames_dir)
    keep = [i for i, t in enumerate(timestamps.tolist()) if t in files]
    if len(keep) < len(timestamps):
        missing = [t for t in timestamps.tolist() if t not in files]
        warnings.warn(f"scene {key}: {len(missing)} of {len(timestamps)} frames have no image in {frames_dir} "
                      f"(first missing: {missing[0]}.png/.jpg); converting the remaining {len(keep)}")
    if not keep:
        return None
    return {
        "url": url,
        "timestamps": timestamps[keep],
        "cameras": cameras[keep],
        "images": [torch.frombuffer(bytearray(files[int(timestamps[i])].read_bytes()), dtype=torch.uint8)
                   for i in keep],
        "key": key,
    }


def convert_realestate10k(cameras_dir: Path, frames_dir: Path, out: Path,
                          target_bytes: int = TARGET_BYTES_PER_CHUNK, progress: bool = True) -> dict[str, str]:
    """Convert every `<cameras_dir>/*.txt` scene into chunks under `out` (a stage dir). -> index."""
    cameras_dir, frames_dir = Path(cameras_dir), Path(frames_dir)
    if not cameras_dir.is_dir():
        raise FileNotFoundError(f"camera folder {cameras_dir} does not exist (expected RealEstate10K <key>.txt files)")
    if not frames_dir.is_dir():
        raise FileNotFoundError(f"frames folder {frames_dir} does not exist (expected <key>/<timestamp>.png|jpg)")
    refuse_existing_chunks(out)
    camera_files = sorted(cameras_dir.glob("*.txt"))
    if not camera_files:
        raise FileNotFoundError(f"no camera files (*.txt) in {cameras_dir}")
    missing = [f.stem for f in camera_files if not (frames_dir / f.stem).is_dir()]
    if len(missing) == len(camera_files):
        raise FileNotFoundError(f"no scene of {cameras_dir} has frames under {frames_dir}/<key>/<timestamp>.png|jpg")

    def scenes() -> Iterator[dict]:
        for camera_file in tqdm(camera_files, desc=f"RealEstate10K -> {out}", unit="scene", disable=not progress):
            scene = load_scene(camera_file, frames_dir)
            if scene is not None:
                yield scene

    index = write_stage(scenes(), out, target_bytes=target_bytes)
    return index
