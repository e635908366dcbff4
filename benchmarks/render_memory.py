"""Peak memory of a long fly-through: the render command's video path (`render.write_video`, frames rendered
`--chunk-size` at a time straight into ffmpeg) for a short and a long video, each in a fresh process.

    OMP_NUM_THREADS=2 python -m benchmarks.render_memory --save benchmarks/results/render-memory-cpu.json

A model of the demo's architecture (random weights: memory does not depend on them) at 256x256 predicts the
Gaussians of two synthetic views (2 x 256 x 256 = 131,072 Gaussians); then each child process renders the
interpolation video. Measured per process:

  CPU   peak RSS during the video (VmHWM, reset through /proc/self/clear_refs after the encoder ran) and the
        process's whole-life peak (ru_maxrss, the encoder included);
  CUDA  torch.cuda.max_memory_allocated during the video (reset after the encoder) and over the whole process.

The ratio long/short is the figure: chunked rendering keeps it near 1. The same video rendered in one decoder
call (`--chunk-size` = frames, what the original's test videos do) shows what the chunks save.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.encoder.d_feature=32", "model.encoder.num_depth_candidates=8",
        "model.encoder.costvolume_unet_feat_dim=32", "model.encoder.gradient_checkpointing=false"]


def make_checkpoint(folder: Path, image: int) -> Path:
    """config.yaml + checkpoints/model.ckpt of a randomly initialised demo-architecture model at image x image."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fabric_mvsplat.config import load_config
    from fabric_mvsplat.build import make_model

    with initialize_config_dir(str(REPO / "fabric_mvsplat" / "configs"), version_base=None):
        dict_config = compose("main", overrides=["+experiment=demo", f"dataset.image_shape=[{image},{image}]",
                                                 "model.encoder.costvolume_unet_attn_res=[]",
                                                 "model.encoder.depth_unet_attn_res=[]", *TINY])
    cfg = load_config(dict_config)
    torch.manual_seed(0)
    model = make_model(cfg)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(dict_config, resolve=True))
    torch.save({"state_dict": model.state_dict()}, folder / "checkpoints" / "model.ckpt")
    return folder / "checkpoints" / "model.ckpt"


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(checkpoint: Path, frames: int, chunk_size: int, image: int, video_image: int, video: Path) -> dict:
    """One measurement in this (fresh) process."""
    import numpy as np
    from PIL import Image

    from fabric_mvsplat.data.synthetic import random_scene, render_frame, scene_seed
    from fabric_mvsplat.inference import load_model
    from fabric_mvsplat.render import trajectory, write_video

    model = load_model(checkpoint, device="auto")
    scene = random_scene(scene_seed(3, "test", 0), 24, image, image)
    context = [4, 16]
    pictures = {i: Image.fromarray((render_frame(scene, i, image, image)[0] * 255 + 0.5).astype(np.uint8))
                for i in context}
    extrinsics = torch.tensor(scene.c2w, dtype=torch.float32)
    intrinsics = torch.tensor(scene.intrinsics, dtype=torch.float32)
    prediction = model.predict_frames(pictures, extrinsics, intrinsics, context, [], [str(i) for i in range(24)])
    path_c2w, path_k = trajectory("interpolation", *prediction.context_cameras(), frames)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = status_bytes("VmRSS")
    seconds = write_video(model, prediction, path_c2w, path_k, video, fps=30, chunk_size=chunk_size,
                          image_shape=(video_image, video_image))
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = status_bytes("VmHWM")
    return {"frames": frames, "chunk_size": chunk_size, "device": str(model.device),
            "gaussians": int(prediction.gaussians.means.shape[1]), "model_image": list(prediction.image_shape),
            "video_image": [video_image, video_image],
            "memory_kind": "cuda_max_allocated" if cuda else "cpu_vmhwm",
            "before_video_bytes": before, "video_peak_bytes": peak, "video_increase_bytes": peak - before,
            "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "seconds_per_frame": sum(seconds) / len(seconds),
            "video_bytes": video.stat().st_size}


def measure(checkpoint: Path, frames: int, chunk_size: int, image: int, video_image: int, folder: Path) -> dict:
    video = folder / f"video_{frames}_{chunk_size}.mp4"
    result = subprocess.run([sys.executable, "-m", "benchmarks.render_memory", "--child", str(checkpoint),
                             "--frames", str(frames), "--chunk-size", str(chunk_size), "--image", str(image),
                             "--video-image", str(video_image),
                             "--video", str(video)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[10, 600], help="short and long video (first, last)")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--image", type=int, default=64, help="the model's input size (Gaussians: 2 x image^2)")
    parser.add_argument("--video-image", type=int, default=256, help="the video's frame size")
    parser.add_argument("--unchunked", type=int, nargs="*", default=[10, 60],
                        help="also render these frame counts in one decoder call each")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.frames[0], args.chunk_size, args.image, args.video_image, args.video)))
        return
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = make_checkpoint(folder / "run", args.image)
        runs = [measure(checkpoint, frames, args.chunk_size, args.image, args.video_image, folder)
                for frames in args.frames]
        runs += [measure(checkpoint, frames, frames, args.image, args.video_image, folder) for frames in args.unchunked]
    short, long = runs[0], runs[len(args.frames) - 1]
    summary = {
        "video_peak_ratio": long["video_peak_bytes"] / short["video_peak_bytes"],
        "video_increase_ratio": long["video_increase_bytes"] / max(short["video_increase_bytes"], 1),
        "process_peak_ratio": long["process_peak_bytes"] / short["process_peak_bytes"],
    }
    load = os.getloadavg()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m benchmarks.render_memory " + " ".join(sys.argv[1:]),
              "torch_threads": torch.get_num_threads(), "load_average": list(load), "runs": runs, **summary}
    for run in runs:
        print(f"{run['frames']:4d} frames, chunks of {run['chunk_size']:3d}: video peak "
              f"{run['video_peak_bytes'] / 2**20:8.1f} MiB (+{run['video_increase_bytes'] / 2**20:7.1f} MiB over the "
              f"{run['before_video_bytes'] / 2**20:.1f} MiB before it), process peak {run['process_peak_bytes'] / 2**20:8.1f}"
              f" MiB, {1000 * run['seconds_per_frame']:.0f} ms/frame")
    print(f"{long['frames']} / {short['frames']} frames: video peak x{summary['video_peak_ratio']:.3f}, increase "
          f"x{summary['video_increase_ratio']:.2f}, process peak x{summary['process_peak_ratio']:.3f} "
          f"(load average {load[0]:.1f})")
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
