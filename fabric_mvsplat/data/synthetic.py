"""Synthetic multi-view scenes in the original chunk format: the embedded default dataset.

Each scene is a textured room (floor, ceiling, four walls) holding boxes and spheres at
varying depths, filmed by a camera that moves like RealEstate10K footage: mostly forward or
sideways, smoothly, with small rotations. Frames are ray cast (vectorised numpy) with
view-independent Lambertian shading and solid (3D) procedural textures, so every world
point has the same colour in every view and a model can learn depth from the images.

World frame: OpenCV-like (+x right, +y down, +z forward); the floor is y = 0 and the
ceiling y = -ROOM_HEIGHT. Cameras stay inside an object-free corridor so that every visible
surface lies between NEAR and FAR (z-depth in world units; there is no per-scene scaling).

    python -m fabric_mvsplat.data.synthetic --out datasets/synthetic --train-scenes 64 \
        --test-scenes 8 --frames 32 --height 64 --width 64 --seed 0
"""

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import OverwriteRefused
from .chunk_io import DEPTH_KEY, cameras_to_vector, encode_depth, encode_image, write_chunks

# Every visible surface has z-depth in [NEAR, FAR] (checked by tests/test_synthetic.py).
NEAR = 1.0
FAR = 20.0

ROOM_MIN = np.array([-4.0, -3.0, -4.0])  # x, y (ceiling), z (wall behind the cameras)
ROOM_MAX = np.array([4.0, 0.0, 14.0])  # x, y (floor), z (back wall)
CORRIDOR_HALF_WIDTH = 1.5  # cameras keep |x| <= this
CAMERA_HEIGHT = (1.3, 1.7)  # above the floor
CAMERA_Z = (-1.0, 3.0)  # cameras stay in this z range; objects start 2 units beyond it
OBJECT_Z = (5.0, 12.5)

LIGHT_AMBIENT = 0.45
LIGHT_DIFFUSE = 0.55
NOISE_LATTICE = 16


@dataclass
class Texture:
    """Solid texture: pattern(p) blends two colours, low-frequency noise modulates brightness."""

    kind: str  # "checker" | "stripes" | "noise"
    colour_a: np.ndarray  # [3] in [0, 1]
    colour_b: np.ndarray  # [3]
    scale: float  # world units per pattern cell
    offset: np.ndarray  # [3] keeps planes off cell boundaries
    direction: np.ndarray  # [3] unit vector (stripes)
    lattice: np.ndarray  # [L, L, L] random values for value noise

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """points [N, 3] -> colours [N, 3]."""
        p = (points + self.offset) / self.scale
        if self.kind == "checker":
            cells = np.floor(p).astype(np.int64).sum(axis=1)
            pattern = (cells % 2).astype(np.float64)
        elif self.kind == "stripes":
            pattern = 0.5 + 0.5 * np.sin(2 * np.pi * (p @ self.direction))
        else:
            pattern = value_noise(self.lattice, p * 2.0)
        colour = self.colour_a + pattern[:, None] * (self.colour_b - self.colour_a)
        # Breaks the periodicity of the patterns so that matching across views is unambiguous.
        brightness = 0.7 + 0.6 * value_noise(self.lattice, p * 0.37 + 5.0)
        return np.clip(colour * brightness[:, None], 0.0, 1.0)


def value_noise(lattice: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Smooth 3D value noise in [0, 1]: trilinear interpolation of a periodic random lattice."""
    size = lattice.shape[0]
    base = np.floor(p)
    frac = p - base
    frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep: no visible lattice creases
    i = base.astype(np.int64) % size
    j = (i + 1) % size
    out = np.zeros(len(p))
    for dx in (0, 1):
        wx = frac[:, 0] if dx else 1.0 - frac[:, 0]
        ix = j[:, 0] if dx else i[:, 0]
        for dy in (0, 1):
            wy = frac[:, 1] if dy else 1.0 - frac[:, 1]
            iy = j[:, 1] if dy else i[:, 1]
            for dz in (0, 1):
                wz = frac[:, 2] if dz else 1.0 - frac[:, 2]
                iz = j[:, 2] if dz else i[:, 2]
                out += wx * wy * wz * lattice[ix, iy, iz]
    return out


@dataclass
class Box:
    center: np.ndarray  # [3]
    half_size: np.ndarray  # [3] in the box frame
    yaw: float  # rotation about the world y axis
    texture: Texture


@dataclass
class Sphere:
    center: np.ndarray  # [3]
    radius: float
    texture: Texture


@dataclass
class Scene:
    """Geometry plus per-frame cameras (OpenCV c2w, normalized intrinsics)."""

    room_textures: list[Texture]  # one per wall: -x, +x, ceiling, floor, -z, +z
    boxes: list[Box]
    spheres: list[Sphere]
    light: np.ndarray  # [3] unit vector towards the light
    c2w: np.ndarray  # [F, 4, 4]
    intrinsics: np.ndarray  # [F, 3, 3] normalized


def random_texture(rng: np.random.Generator) -> Texture:
    direction = rng.normal(size=3)
    return Texture(
        kind=str(rng.choice(["checker", "stripes", "noise"])),
        colour_a=rng.uniform(0.05, 0.95, size=3),
        colour_b=rng.uniform(0.05, 0.95, size=3),
        scale=float(rng.uniform(0.4, 1.2)),
        offset=rng.uniform(0.2, 0.8, size=3) * 0.9,
        direction=direction / np.linalg.norm(direction),
        lattice=rng.uniform(0.0, 1.0, size=(NOISE_LATTICE,) * 3),
    )


def rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def random_trajectory(rng: np.random.Generator, frames: int) -> np.ndarray:
    """RealEstate10K-like camera path: smooth forward/sideways walk, small pan/tilt. -> c2w [F, 4, 4]."""
    t = np.linspace(0.0, 1.0, frames)
    heading = rng.uniform(-np.pi / 3, np.pi / 3)  # direction of travel from +z; |.| up to 60deg: sideways
    length = rng.uniform(1.5, 3.0)
    ease = t + rng.uniform(-0.08, 0.08) * np.sin(np.pi * t)  # uneven walking speed
    path = np.stack([np.sin(heading) * ease, np.zeros(frames), np.cos(heading) * ease], axis=1) * length
    path[:, 1] += 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi))  # bob

    # Fit the path into the corridor: cameras never get closer than NEAR to any surface.
    x_span = path[:, 0].max() - path[:, 0].min()
    x_start = rng.uniform(-CORRIDOR_HALF_WIDTH, CORRIDOR_HALF_WIDTH - x_span) - path[:, 0].min()
    z_span = path[:, 2].max() - path[:, 2].min()
    z_start = rng.uniform(CAMERA_Z[0], CAMERA_Z[1] - z_span) - path[:, 2].min()
    height = rng.uniform(*CAMERA_HEIGHT)
    centres = path + np.array([x_start, -height, z_start])

    yaw = rng.uniform(-0.2, 0.2) + 0.12 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 2 * np.pi))
    pitch = rng.uniform(-0.06, 0.06) + 0.03 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t)
    roll = rng.uniform(-0.03, 0.03) * np.ones(frames)

    c2w = np.tile(np.eye(4), (frames, 1, 1))
    for f in range(frames):
        c2w[f, :3, :3] = rotation_y(yaw[f]) @ rotation_x(pitch[f]) @ rotation_z(roll[f])
        c2w[f, :3, 3] = centres[f]
    return c2w


def random_scene(rng: np.random.Generator, frames: int, height: int, width: int) -> Scene:
    boxes = []
    for _ in range(int(rng.integers(3, 6))):
        half = rng.uniform([0.35, 0.35, 0.35], [1.0, 1.3, 1.0])
        centre = np.array([rng.uniform(-3.0, 3.0), -half[1], rng.uniform(*OBJECT_Z)])  # resting on the floor
        boxes.append(Box(centre, half, float(rng.uniform(0, np.pi)), random_texture(rng)))
    spheres = []
    for _ in range(int(rng.integers(2, 5))):
        radius = float(rng.uniform(0.3, 0.8))
        centre = np.array([rng.uniform(-3.0, 3.0), rng.uniform(-2.9 + radius, -radius), rng.uniform(*OBJECT_Z)])
        spheres.append(Sphere(centre, radius, random_texture(rng)))
    light = np.array([rng.uniform(-0.5, 0.5), -1.0, rng.uniform(-0.8, 0.2)])

    # Square pixels; horizontal FoV 58-80 degrees, like RealEstate10K's phone/camera footage.
    fx = rng.uniform(0.6, 0.9)
    k = np.array([[fx, 0.0, 0.5], [0.0, fx * width / height, 0.5], [0.0, 0.0, 1.0]])
    return Scene(
        room_textures=[random_texture(rng) for _ in range(6)],
        boxes=boxes,
        spheres=spheres,
        light=light / np.linalg.norm(light),
        c2w=random_trajectory(rng, frames),
        intrinsics=np.tile(k, (frames, 1, 1)),
    )


@functools.lru_cache(maxsize=4)
def camera_directions(k: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """Camera-frame rays through pixel centres ((col + 0.5) / W, (row + 0.5) / H), z = 1 so that the
    ray parameter t is the z-depth. k = (fx, fy, cx, cy) normalized. -> [H*W, 3] (cached: frames share K)."""
    fx, fy, cx, cy = k
    x = ((np.arange(width) + 0.5) / width - cx) / fx
    y = ((np.arange(height) + 0.5) / height - cy) / fy
    directions = np.ones((height, width, 3))
    directions[..., 0], directions[..., 1] = x[None, :], y[:, None]
    directions.flags.writeable = False
    return directions.reshape(-1, 3)


def camera_rays(c2w: np.ndarray, k: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """-> origin [3], world directions [H*W, 3] through the pixel centres."""
    directions = camera_directions((k[0, 0], k[1, 1], k[0, 2], k[1, 2]), height, width)
    return c2w[:3, 3], directions @ c2w[:3, :3].T


def intersect_room(origin: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit point of the rays from the room's inside. -> t [N], wall id [N] (0..5), inward normal [N, 3]."""
    safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
    bound = np.where(d > 0, ROOM_MAX, ROOM_MIN)
    t_axis = (bound - origin) / safe  # [N, 3]
    axis = np.argmin(t_axis, axis=1)
    t = t_axis[np.arange(len(d)), axis]
    positive = d[np.arange(len(d)), axis] > 0
    normal = np.zeros_like(d)
    normal[np.arange(len(d)), axis] = np.where(positive, -1.0, 1.0)
    return t, axis * 2 + positive, normal


def bounding_sphere_candidates(origin: np.ndarray, d: np.ndarray, dd: np.ndarray, center: np.ndarray,
                               radius: float) -> np.ndarray:
    """Indices of the rays that reach a sphere in front of the camera; cheap culling before exact tests.
    dd [N] = |d|^2, computed once per frame."""
    oc = origin - center
    b = d @ oc
    disc = b * b - dd * (oc @ oc - radius**2)
    return np.flatnonzero((disc > 0) & (b < 0) | (oc @ oc < radius**2))


def intersect_box(origin: np.ndarray, d: np.ndarray, dd: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Slab test in the box frame. -> t [N] (inf on miss), outward normal [N, 3] (world)."""
    t_out, normal_out = np.full(len(d), np.inf), np.zeros_like(d)
    rows = bounding_sphere_candidates(origin, d, dd, box.center, float(np.linalg.norm(box.half_size)))
    r = rotation_y(box.yaw)
    o_local = (origin - box.center) @ r  # world -> box frame is r.T
    d_local = d[rows] @ r
    safe = np.where(np.abs(d_local) < 1e-12, 1e-12, d_local)
    t0 = (-box.half_size - o_local) / safe
    t1 = (box.half_size - o_local) / safe
    t_near, t_far = np.minimum(t0, t1), np.maximum(t0, t1)
    t_enter, axis = t_near.max(axis=1), t_near.argmax(axis=1)
    hit = (t_enter <= t_far.min(axis=1)) & (t_enter > 0)
    normal_local = np.zeros_like(d_local)
    local_rows = np.arange(len(rows))
    normal_local[local_rows, axis] = -np.sign(d_local[local_rows, axis])
    t_out[rows] = np.where(hit, t_enter, np.inf)
    normal_out[rows] = normal_local @ r.T
    return t_out, normal_out


def intersect_sphere(origin: np.ndarray, d: np.ndarray, dd: np.ndarray, sphere: Sphere) -> tuple[np.ndarray, np.ndarray]:
    """-> t [N] (inf on miss), outward normal [N, 3]."""
    t_out, normal_out = np.full(len(d), np.inf), np.zeros_like(d)
    rows = bounding_sphere_candidates(origin, d, dd, sphere.center, sphere.radius)
    d, a = d[rows], dd[rows]
    oc = origin - sphere.center
    b = d @ oc
    disc = b * b - a * (oc @ oc - sphere.radius**2)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    t_out[rows] = np.where((disc > 0) & (t > 0), t, np.inf)
    normal_out[rows] = (origin + d * t[:, None] - sphere.center) / sphere.radius
    return t_out, normal_out


def render_frame(scene: Scene, frame: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """-> rgb [H, W, 3] float in [0, 1], z-depth [H, W] (world units)."""
    origin, d = camera_rays(scene.c2w[frame], scene.intrinsics[frame], height, width)
    dd = np.einsum("ij,ij->i", d, d)
    t, wall, normal = intersect_room(origin, d)
    surface = wall.copy()  # 0..5 walls, 6.. objects
    objects = [(b, intersect_box) for b in scene.boxes] + [(s, intersect_sphere) for s in scene.spheres]
    for index, (obj, intersect) in enumerate(objects):
        t_obj, n_obj = intersect(origin, d, dd, obj)
        closer = t_obj < t
        t = np.where(closer, t_obj, t)
        surface[closer] = 6 + index
        normal[closer] = n_obj[closer]

    points = origin + d * t[:, None]
    colour = np.zeros_like(points)
    textures = scene.room_textures + [obj.texture for obj, _ in objects]
    for index in np.unique(surface):
        mask = surface == index
        colour[mask] = textures[index](points[mask])
    shade = LIGHT_AMBIENT + LIGHT_DIFFUSE * np.clip(normal @ scene.light, 0.0, None)
    rgb = np.clip(colour * shade[:, None], 0.0, 1.0)
    return rgb.reshape(height, width, 3), t.reshape(height, width)


def scene_seed(seed: int, stage: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 0, "test": 1}[stage], index])


def scene_key(seed: int, stage: str, index: int) -> str:
    """16 hex chars, like RealEstate10K keys; unique across stages and seeds."""
    return hashlib.sha1(f"synthetic-{seed}-{stage}-{index}".encode()).hexdigest()[:16]


def render_antialiased(scene: Scene, frame: int, height: int, width: int,
                       supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-filtered supersampling; normalized intrinsics are the same at every resolution.
    -> rgb [H, W, 3], z-depth [H, W] through the pixel centres (never averaged across an edge)."""
    rgb, depth = render_frame(scene, frame, height * supersample, width * supersample)
    if supersample == 1:
        return rgb, depth
    _, depth = render_frame(scene, frame, height, width)
    return rgb.reshape(height, supersample, width, supersample, 3).mean(axis=(1, 3)), depth


def render_example(seed: int, stage: str, index: int, frames: int, height: int, width: int, quality: int = 95,
                   supersample: int = 1) -> dict:
    """One scene as a chunk example dict (url, timestamps, cameras [F, 18], images, key) plus each frame's
    ground-truth z-depth under DEPTH_KEY (16-bit PNGs, see chunk_io; the original's loader ignores it)."""
    scene = random_scene(scene_seed(seed, stage, index), frames, height, width)
    images, depths = [], []
    for f in range(frames):
        rgb, depth = render_antialiased(scene, f, height, width, supersample)
        images.append(encode_image((rgb * 255.0 + 0.5).astype(np.uint8), format="jpeg", quality=quality))
        depths.append(encode_depth(depth))
    w2c = torch.from_numpy(np.linalg.inv(scene.c2w)).float()
    return {
        "url": f"synthetic://seed={seed}/{stage}/{index}",
        "timestamps": torch.arange(frames, dtype=torch.int64) * 33_333,  # 30 fps in microseconds
        "cameras": cameras_to_vector(w2c, torch.from_numpy(scene.intrinsics).float()),
        "images": images,
        "key": scene_key(seed, stage, index),
        DEPTH_KEY: depths,
    }


def evaluation_index(keys: list[str], frames: int, gap: int, seed: int) -> dict[str, dict[str, list[int]]]:
    """The original's index format: two contexts `gap` apart and three distinct targets between them."""
    rng = np.random.default_rng([seed, 2])
    index = {}
    for key in keys:
        left = int(rng.integers(0, frames - gap))
        targets = rng.choice(np.arange(left + 1, left + gap), size=3, replace=False)
        index[key] = {"context": [left, left + gap], "target": sorted(int(x) for x in targets)}
    return index


def default_context_gap(frames: int) -> int:
    return max(4, min(frames - 1, frames // 2))


@dataclass(frozen=True)
class SyntheticSpec:
    """What a synthetic dataset holds (recorded in its synthetic.json); the command line's defaults."""

    train_scenes: int = 64
    test_scenes: int = 8
    frames: int = 32
    height: int = 64
    width: int = 64
    seed: int = 0
    context_gap: int | None = None  # the evaluation index's context gap (None: default_context_gap(frames))
    quality: int = 95  # JPEG quality
    supersample: int = 1  # anti-aliasing: N x N samples per pixel

    def requested(self) -> dict:
        """The fields set away from their defaults."""
        default = SyntheticSpec()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


def generate_synthetic_dataset(out: Path, spec: SyntheticSpec = SyntheticSpec(), *, target_bytes: int = 100_000_000,
                               progress: bool = True, overwrite: bool = False) -> None:
    """Write out/train, out/test (chunks + index.json) and out/evaluation_index.json.

    A folder that already holds chunks or an index is refused (it may be someone's converted data)
    unless `overwrite`, which first deletes the files this function writes."""
    train_scenes, test_scenes, frames, seed = spec.train_scenes, spec.test_scenes, spec.frames, spec.seed
    height, width, quality, supersample = spec.height, spec.width, spec.quality, spec.supersample
    gap = default_context_gap(frames) if spec.context_gap is None else spec.context_gap
    if frames < 5:
        raise ValueError(f"--frames {frames} is too short: need >= 5 (two contexts + three targets between them)")
    if not 4 <= gap < frames:
        raise ValueError(f"--context-gap {gap} must be in [4, frames - 1 = {frames - 1}] to fit 3 targets")
    if supersample < 1:
        raise ValueError(f"--supersample {supersample} must be >= 1")
    if min(height, width) < 8:
        raise ValueError(f"image size {height}x{width} is too small: use at least 8x8")
    out = Path(out)
    existing = existing_dataset_files(out)
    if existing and not overwrite:
        raise OverwriteRefused(f"{out} already holds a dataset ({', '.join(str(p.relative_to(out)) for p in existing[:3])}"
                              f"{' ...' if len(existing) > 3 else ''}): refusing to overwrite it; choose another "
                              "--out, or pass --overwrite to replace its chunks and indices")
    for path in existing:
        path.unlink()
    bar = tqdm(total=train_scenes + test_scenes, desc=f"synthetic scenes -> {out}", unit="scene", disable=not progress)

    def examples(stage: str, count: int):  # a generator: chunks are written as they fill, memory stays bounded
        for index in range(count):
            yield render_example(seed, stage, index, frames, height, width, quality, supersample)
            bar.update(1)

    for stage, count in (("train", train_scenes), ("test", test_scenes)):
        write_chunks(examples(stage, count), out / stage, target_bytes=target_bytes)
    bar.close()
    keys = [scene_key(seed, "test", i) for i in range(test_scenes)]
    with open(out / "evaluation_index.json", "w") as f:
        json.dump(evaluation_index(keys, frames, gap, seed), f, indent=2)
    params = dict(train_scenes=train_scenes, test_scenes=test_scenes, frames=frames, height=height, width=width,
                  seed=seed, context_gap=gap, quality=quality, supersample=supersample, near=NEAR, far=FAR)
    (out / "synthetic.json").write_text(json.dumps(params, indent=1))


def existing_dataset_files(root: Path) -> list[Path]:
    """The chunk-format files under `root` that generating would replace or mix with (sorted)."""
    root = Path(root)
    files = [root / name for name in ("evaluation_index.json", "synthetic.json") if (root / name).is_file()]
    for stage in ("train", "test"):
        files += sorted((root / stage).glob("*.torch")) + [p for p in [root / stage / "index.json"] if p.is_file()]
    return sorted(files)


def ensure_synthetic_dataset(root: Path, spec: SyntheticSpec = SyntheticSpec(), *, progress: bool = True) -> bool:
    """The demo's dataset: generate it under `root` if that folder is absent or holds no files. -> whether it generated.

    A root with chunks is used as it is (whatever made them); a root holding other files but no chunks is
    refused, so that a mistyped path is never filled with synthetic scenes standing in for real ones.
    Generation goes to a sibling folder that is renamed into place at the end, so an interrupted run never
    leaves a half-written dataset that would later count as cached.
    """
    root = Path(root)
    if any(any((root / stage).glob("*.torch")) for stage in ("train", "test")):
        recorded = root / "synthetic.json"
        if recorded.exists() and spec.requested():
            params = json.loads(recorded.read_text())
            differing = {k: v for k, v in spec.requested().items() if k in params and params[k] != v}
            if differing:
                warnings.warn(f"{root} holds synthetic data generated with {params}; keeping it although "
                              f"{differing} was requested (delete {root} to regenerate)")
        return False
    if root.is_file() or (root.is_dir() and any(p.is_file() for p in root.rglob("*"))):
        raise OverwriteRefused(f"dataset.synthetic_if_missing={root} holds files but no chunks in train/ or test/: not "
                               "generating synthetic data into it; point dataset.roots and dataset.synthetic_if_missing "
                               "at an absent or empty folder, or dataset.roots at a chunk dataset")
    print(f"fabric_mvsplat: {root} is {'empty' if root.exists() else 'absent'}: generating the synthetic demo "
          f"dataset there", file=sys.stderr, flush=True)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    generate_synthetic_dataset(partial, spec, progress=progress)
    root.mkdir(parents=True, exist_ok=True)
    for item in sorted(partial.iterdir()):
        target = root / item.name
        if target.exists():  # an empty folder (checked above): nothing is lost
            shutil.rmtree(target)
        os.replace(item, target)
    partial.rmdir()
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    spec = SyntheticSpec()  # the defaults
    parser.add_argument("--train-scenes", type=int, default=spec.train_scenes)
    parser.add_argument("--test-scenes", type=int, default=spec.test_scenes)
    parser.add_argument("--frames", type=int, default=spec.frames)
    parser.add_argument("--height", type=int, default=spec.height)
    parser.add_argument("--width", type=int, default=spec.width)
    parser.add_argument("--seed", type=int, default=spec.seed)
    parser.add_argument("--context-gap", type=int, default=spec.context_gap,
                        help="evaluation index context gap (default frames // 2)")
    parser.add_argument("--quality", type=int, default=spec.quality, help="JPEG quality")
    parser.add_argument("--supersample", type=int, default=spec.supersample,
                        help="anti-aliasing: render at N x N samples per pixel")
    parser.add_argument("--target-bytes", type=int, default=100_000_000, help="approximate chunk size")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the chunks and indices of a dataset already in --out (refused otherwise)")
    args = parser.parse_args(argv)
    try:
        spec = SyntheticSpec(args.train_scenes, args.test_scenes, args.frames, args.height, args.width, args.seed,
                             context_gap=args.context_gap, quality=args.quality, supersample=args.supersample)
        generate_synthetic_dataset(args.out, spec, target_bytes=args.target_bytes, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        parser.exit(2, f"fabric_mvsplat.data.synthetic: {error}\n")
    print(f"wrote {args.out}/train, {args.out}/test, {args.out}/evaluation_index.json (near={NEAR}, far={FAR})")


if __name__ == "__main__":
    main()
