"""Training-memory budget: saved-for-backward bytes of one training step by model part, per option.

    OMP_NUM_THREADS=2 python -m benchmarks.memory_budget --save benchmarks/results/memory-budget-re10k-256.json

One training forward of the full +experiment=re10k model (2 context views, 4 targets, MSE + LPIPS) at
256x256, batch 1, on CPU, for each precision (32-true, bf16-mixed) and memory option; autograd's
saved tensors are caught with `torch.autograd.graph.saved_tensors_hooks` and attributed to the part
whose module was running (`PARTS`). Saved bytes are what a GPU must hold between forward and backward;
they grow linearly with the batch, so the batch-14 budget is

    weights + gradients + Adam moments (16 B per trainable parameter)
  + 14 x saved bytes per scene, with the renderer's replaced by gsplat's buffers (`gsplat_saved_bytes`)
  + a backward transient of 2 x the largest single saved tensor at batch 14 (its gradient and a temporary).

The CUDA caching allocator's fragmentation comes on top; the figure is an estimate, not a measured peak.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.conftest import CONFIG_DIR, autocast, environment_info, load_average, make_batch
from benchmarks.test_bench_model import SavedTensorMeter, by_part

# (option name, config overrides): SDPA attention is the default; "original" is the explicit softmax.
OPTIONS = {
    "none": ["model.encoder.gradient_checkpointing=false", "loss.lpips.gradient_checkpointing=false"],
    "attention-ckpt": ["model.encoder.gradient_checkpointing=true", "loss.lpips.gradient_checkpointing=false"],
    "attention+lpips-ckpt": ["model.encoder.gradient_checkpointing=true", "loss.lpips.gradient_checkpointing=true"],
    "all-ckpt": ["model.encoder.gradient_checkpointing=true", "loss.lpips.gradient_checkpointing=true",
                 "model.encoder.transformer_checkpointing=true"],
    "original-attention": ["model.encoder.gradient_checkpointing=false", "loss.lpips.gradient_checkpointing=false",
                           "model.encoder.attention=original"],
    "warp-cost-volume": ["model.encoder.gradient_checkpointing=false", "loss.lpips.gradient_checkpointing=false",
                         "model.encoder.cost_volume=warp"],
}
PRECISIONS = ("32-true", "bf16-mixed")
BATCH = 14
GIB = 1024**3
GSPLAT_TILE_SIZE = 16  # gsplat 1.5 rasterizes 16x16 tiles


def gsplat_saved_bytes(num_images: int, num_gaussians: int, intersections: int, pixels_per_image: int) -> int:
    """What gsplat's `rasterization` keeps for backward (its fully fused projection + tile rasterizer,
    packed=False): per camera and Gaussian means2d (2), depths (1), conics (3), opacities (1) and colors (3)
    as fp32, radii (2) as int32; per tile intersection a 64-bit sort key and a 32-bit Gaussian id; per
    pixel the final transmittance (fp32) and the last contributing index (int32)."""
    per_gaussian = (2 + 1 + 3 + 1 + 3) * 4 + 2 * 4
    return num_images * (num_gaussians * per_gaussian + pixels_per_image * 8) + intersections * 12


class LargestSaved:
    """The largest single saved tensor (bytes), to size the backward's transient buffers."""

    def __init__(self) -> None:
        self.bytes = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.bytes = max(self.bytes, tensor.untyped_storage().nbytes())
        return tensor


def build_model(overrides: list[str], image: int, lpips_dir: Path):
    from hydra import compose, initialize_config_dir

    from fabric_mvsplat.config import load_config
    from fabric_mvsplat.build import make_model

    base = ["+experiment=re10k", "model.encoder.unimatch_weights_path=null", f"loss.lpips.weights={lpips_dir}",
            f"dataset.image_shape=[{image},{image}]", "dataset.view_sampler.num_context_views=2",
            # The torch rasterizer: its footprint binning is what counts gsplat's tile intersections (the compiled
            # CPU rasterizer bins inside C++).
            "model.decoder.backend=torch"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = load_config(compose("main", overrides=base + overrides))
    torch.manual_seed(0)
    return make_model(cfg)


def measure(option: str, precision: str, image: int, lpips_dir: Path) -> dict:
    import fabric_mvsplat.model.decoder.rasterize_torch as rasterize_torch

    model = build_model(OPTIONS[option], image, lpips_dir)
    model.train()
    batch = make_batch(1, 2, 4, image, "cpu")
    intersections = []
    original_bin = rasterize_torch.bin_to_tiles

    def counting_bin(*args):  # the same footprint boxes on gsplat's 16x16 tiles = gsplat's intersections
        intersections.append(original_bin(*args[:6], GSPLAT_TILE_SIZE).gaussian.shape[0])
        return original_bin(*args)

    rasterize_torch.bin_to_tiles = counting_bin
    largest = LargestSaved()
    try:
        with SavedTensorMeter(model, depth=4) as meter, \
                torch.autograd.graph.saved_tensors_hooks(lambda t: largest.pack(meter.pack(t)), lambda t: t):
            with autocast("cpu", precision):
                loss = model(batch, 0).loss
    finally:
        rasterize_torch.bin_to_tiles = original_bin
    assert torch.isfinite(loss), f"{option}/{precision}: loss {loss}"
    parts = by_part(meter.by_module)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    num_gaussians = 2 * image * image
    gsplat_bytes = gsplat_saved_bytes(4, num_gaussians, sum(intersections), image * image)
    per_scene_gsplat = sum(parts.values()) - parts.get("renderer", 0) + gsplat_bytes
    states = 16 * params
    transient = 2 * largest.bytes * BATCH
    estimate = states + BATCH * per_scene_gsplat + transient
    return {"option": option, "precision": precision, "image": image, "saved_bytes": sum(parts.values()),
            "saved_bytes_by_part": parts, "trainable_parameters": params, "tile_intersections": sum(intersections),
            "gsplat_renderer_saved_bytes": gsplat_bytes, "largest_saved_tensor_bytes": largest.bytes,
            "estimate_batch14_bytes": estimate,
            "estimate_terms": {"states": states, "saved_x14_with_gsplat": BATCH * per_scene_gsplat,
                               "transient": transient},
            "load_average": load_average()}


def markdown(rows: list[dict]) -> str:
    parts = ["backbone+transformer", "cost volume", "U-Nets", "depth/Gaussian heads", "Gaussian adapter", "renderer",
             "LPIPS", "other (losses, glue)"]
    header = ["precision", "option", *parts, "total / scene", f"batch {BATCH} estimate (gsplat)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    options = list(OPTIONS)
    for row in sorted(rows, key=lambda r: (PRECISIONS.index(r["precision"]), options.index(r["option"]))):
        cells = [row["precision"], row["option"]]
        cells += [f"{row['saved_bytes_by_part'].get(part, 0) / 2**20:,.0f}" for part in parts]
        cells += [f"{row['saved_bytes'] / 2**20:,.0f}", f"{row['estimate_batch14_bytes'] / GIB:.1f} GiB"]
        lines.append("| " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{image}x{image}" for image in sorted({row["image"] for row in rows}))
    return "\n".join(lines) + f"\n\nParts in MiB saved for backward per scene ({sizes}, 2 context views, 4 targets).\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_budget", description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=int, default=256)
    parser.add_argument("--options", nargs="+", choices=sorted(OPTIONS), default=list(OPTIONS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--save", type=Path,
                        help="JSON to add the rows to (same precision and option replaced; written after each row), "
                             "with the table beside it as .md")
    args = parser.parse_args(argv)
    from tests.lpips_test_weights import write_lpips_test_weights

    # One process holds one 256x256 training graph at a time; run big option sets as several calls
    # with the same --save (a 2-core, 24 GB machine shared with others runs out of memory otherwise).
    rows = json.loads(args.save.read_text())["rows"] if args.save and args.save.exists() else []
    command = "python -m benchmarks.memory_budget " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        write_lpips_test_weights(Path(tmp), seed=0)  # random VGG in the real format: same memory as the real one
        for precision in args.precisions:
            for option in args.options:
                row = {**measure(option, precision, args.image, Path(tmp)), "command": command}
                rows = [r for r in rows if (r["precision"], r["option"], r["image"]) != (precision, option, args.image)]
                rows.append(row)
                print(f"{precision} {option}: saved {row['saved_bytes'] / 2**20:,.0f} MiB/scene "
                      f"{ {part: round(nbytes / 2**20) for part, nbytes in row['saved_bytes_by_part'].items()} }, "
                      f"batch {BATCH} estimate {row['estimate_batch14_bytes'] / GIB:.1f} GiB "
                      f"(load {row['load_average']})", flush=True)
                if args.save:
                    env = {**environment_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
                    args.save.parent.mkdir(parents=True, exist_ok=True)
                    args.save.write_text(json.dumps({"machine_info": {"fabric_mvsplat": env},
                                                     "datetime": datetime.datetime.now().isoformat(),
                                                     "rows": rows}, indent=1))
                    args.save.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
