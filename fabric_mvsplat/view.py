"""`fabric-mvsplat-view` / `python -m fabric_mvsplat.view PLY_OR_FOLDER`: the Gaussians in the browser (viser).

Serves a 3DGS `.ply` (ours or any standard one) or a `fabric_mvsplat.render` output folder (its gaussians.ply, and
the context cameras of its scene.json as frusta showing their images) on http://127.0.0.1:8080 by default; the
page opens at the first context camera. Ctrl-C stops the server. Needs the `viewer` extra:
`pip install -e ".[viewer]"`.
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, UserError

SH_C0 = 0.28209479177387814  # the degree-0 SH basis constant: colour = SH_C0 * f_dc + 0.5


@dataclass
class SplatArrays:
    """What viser draws: centres [N, 3], covariances [N, 3, 3], rgb [N, 3] in [0, 1], opacity [N, 1]."""

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray


def quaternion_to_matrix(quaternions: np.ndarray) -> np.ndarray:
    """[N, 4] (w, x, y, z), any norm -> [N, 3, 3] rotations."""
    w, x, y, z = (quaternions / np.linalg.norm(quaternions, axis=1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def read_splats(path: Path) -> SplatArrays:
    """A 3DGS .ply -> SplatArrays (view-independent colour: the degree-0 band)."""
    from .model.ply_export import read_ply

    try:
        vertex = read_ply(path)
    except Exception as error:  # plyfile raises several types for a broken file
        raise InputError(f"{path} cannot be read as a .ply ({type(error).__name__}: {error}): pass a 3DGS .ply or "
                         "a fabric_mvsplat.render output folder") from None
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
              "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in needed if name not in vertex]
    if missing:
        raise InputError(f"{path} lacks the 3DGS attributes {missing}: pass a Gaussian-splatting .ply")
    centers = np.stack([vertex[k] for k in ("x", "y", "z")], 1).astype(np.float32)
    scales = np.exp(np.stack([vertex[f"scale_{i}"] for i in range(3)], 1).astype(np.float64))
    rotations = quaternion_to_matrix(np.stack([vertex[f"rot_{i}"] for i in range(4)], 1).astype(np.float64))
    covariances = rotations @ (scales[:, :, None] ** 2 * rotations.transpose(0, 2, 1))
    rgbs = np.clip(SH_C0 * np.stack([vertex[f"f_dc_{i}"] for i in range(3)], 1) + 0.5, 0, 1)
    opacities = 1 / (1 + np.exp(-vertex["opacity"].astype(np.float64)))
    return SplatArrays(centers, covariances.astype(np.float32), rgbs.astype(np.float32),
                       opacities[:, None].astype(np.float32))


def rotation_to_wxyz(rotation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return np.array([w, x, y, z])


def resolve_input(path: Path) -> tuple[Path, dict | None, Path | None]:
    """A .ply, or an output folder -> (ply, scene.json contents or None, the folder or None)."""
    path = Path(path)
    if path.is_dir():
        ply = path / "gaussians.ply"
        if not ply.is_file():
            raise InputError(f"{path} holds no gaussians.ply: pass a fabric_mvsplat.render output folder or a .ply")
        scene_file = path / "scene.json"
        return ply, json.loads(scene_file.read_text()) if scene_file.is_file() else None, path
    if not path.is_file():
        raise InputError(f"{path} does not exist: pass a .ply or a fabric_mvsplat.render output folder")
    return path, None, None


def serve(path: Path, host: str = "127.0.0.1", port: int = 8080):
    """Start the viser server with the splats and the context frusta; returns it (running in its threads)."""
    try:
        import viser
    except ImportError:
        raise InputError("the viewer needs viser: pip install -e \".[viewer]\" (or pip install viser)") from None
    from PIL import Image

    ply, scene, folder = resolve_input(path)
    splats = read_splats(ply)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    server.scene.add_gaussian_splats("/gaussians", centers=splats.centers, covariances=splats.covariances,
                                     rgbs=splats.rgbs, opacities=splats.opacities)
    cameras = (scene or {}).get("context", [])
    height, width = (scene or {}).get("image_shape", [1, 1])
    baseline = float((scene or {}).get("scale", 1.0))
    for i, camera in enumerate(cameras):
        c2w, k = np.asarray(camera["c2w"]), np.asarray(camera["K"])
        stem = Path(camera["name"]).with_suffix("").as_posix().replace("/", "_")
        image_file = folder / "context" / f"{stem}.png" if folder is not None else None
        image = np.asarray(Image.open(image_file)) if image_file is not None and image_file.is_file() else None
        # viser's frusta look down +z with +y down: the OpenCV axes the cameras are given in.
        server.scene.add_camera_frustum(f"/cameras/{i}_{stem}", fov=float(2 * np.arctan(0.5 / k[1, 1])),
                                        aspect=float(width * k[0, 0] / (height * k[1, 1])) if k[1, 1] else 1.0,
                                        scale=0.15 * baseline, thickness=0.004 * baseline, image=image, wxyz=rotation_to_wxyz(c2w[:3, :3]),
                                        position=c2w[:3, 3])
    if cameras:  # open behind the context cameras (one baseline back), looking where the first one looks, its -y up
        c2w = np.asarray(cameras[0]["c2w"])
        centre = np.mean([np.asarray(camera["c2w"])[:3, 3] for camera in cameras], axis=0)
        look, up = c2w[:3, 2], -c2w[:3, 1]
        server.scene.set_up_direction(tuple(up))
        server.initial_camera.position = tuple(centre - look * baseline)
        server.initial_camera.look_at = tuple(centre + look * float(scene.get("near", 1.0)) * 2)
        server.initial_camera.up = tuple(up)
        server.initial_camera.fov = float(2 * np.arctan(0.5 / np.asarray(cameras[0]["K"])[1, 1]))
    else:  # a bare .ply: look at the splats' centre from outside their extent
        centre = np.median(splats.centers, axis=0)
        extent = float(np.percentile(np.linalg.norm(splats.centers - centre, axis=1), 90)) or 1.0
        server.initial_camera.position = tuple(centre + np.array([0.0, 0.0, -2.5 * extent]))
        server.initial_camera.look_at = tuple(centre)
    return server, len(splats.centers), len(cameras)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fabric-mvsplat-view", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a .ply or a fabric_mvsplat.render output folder")
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default: this machine only); 0.0.0.0 "
                                                            "serves every network interface")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    try:
        server, count, cameras = serve(args.path, args.host, args.port)
    except UserError as error:
        print(f"fabric_mvsplat.view: {error}", file=sys.stderr)
        sys.exit(2)
    url = f"http://{args.host}:{server.get_port()}"
    print(f"viewer: {count:,} Gaussians, {cameras} context camera(s) from {args.path}", flush=True)
    print(f"open {url} in a browser (Ctrl-C stops the server)", flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        server.stop()
        print("viewer: stopped", flush=True)


if __name__ == "__main__":
    main()
