"""How far gsplat's rasterization conventions move a trained model's test scores, measured on CPU.

    OMP_NUM_THREADS=1 python -m benchmarks.gsplat_conventions --checkpoint CKPT \
        --save benchmarks/results/gsplat-conventions-demo.json -- +experiment=demo dataset.roots=[datasets/synthetic]

Everything after `--` is a Hydra command line as for test mode (the test split and evaluation index it names;
`mode=test dataset/view_sampler=evaluation` are added). Each test scene is encoded once and its target views are
rendered by four rasterizers, then scored as test mode scores them (PSNR, SSIM; LPIPS with --lpips-weights):

- torch: our torch backend, the original's conventions (alpha capped at 0.99; a Gaussian reaches every pixel
  where its alpha is at least 1/255).
- gsplat: gsplat 1.5.3's own Python on the CPU versions of its kernels (tests/gsplat_cpu_kernels.py), what
  model.decoder.backend=gsplat runs on CUDA: alpha capped at 0.999, footprint box of min(3.33, sqrt(2 ln(255 o)))
  standard deviations per axis on 16-px tiles (the alpha test decides inside).
- gsplat_cap_0.99: gsplat with the original's 0.99 cap: isolates the cap (expected equal to torch).
- inria_footprint: gsplat's tile machinery with the original rasterizer's footprint and cap: the 16-px tiles met
  by its getRect square around a circle of radius ceil(3 sqrt(largest 2D eigenvalue)), every pixel of those tiles
  tested for alpha >= 1/255 as in its kernel, alpha capped at 0.99. Beyond 3 sigma a Gaussian thus reaches some
  pixels (inside those tiles) and not others (outside them).

Differences are reported against torch: score deltas and per-pixel colour differences. The same gaussians and
cameras go to every variant; only the rasterizer changes.
"""

import argparse
import datetime
import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.conftest import environment_info

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("torch", "gsplat", "gsplat_cap_0.99", "inria_footprint")


def inria_radii(kernels):
    """A replacement for the CPU kernels' _radii: the original rasterizer's radius, ceil(3 sqrt(lambda_max)),
    the same on both axes, with gsplat's other culls (near/far, det, opacity, off-image)."""

    @torch.no_grad()
    def radii(projected, z, opacities, width, height, near_plane, far_plane, radius_clip):
        valid = (z >= near_plane) & (z <= far_plane) & (projected["det"] > 0)
        if opacities is not None:
            valid &= opacities >= kernels.ALPHA_THRESHOLD
        a, c, det = projected["a"], projected["c"], projected["det"]
        mid = 0.5 * (a + c)
        largest = mid + torch.sqrt(torch.clamp_min(mid * mid - det, 0.1))  # the original's lambda1
        radius = torch.ceil(3 * torch.sqrt(largest.clamp_min(0)))
        valid &= ~(radius <= radius_clip)
        u, v = projected["mean2d"].unbind(-1)
        valid &= ~((u + radius <= 0) | (u - radius >= width) | (v + radius <= 0) | (v - radius >= height))
        both = torch.stack([radius, radius], dim=-1).nan_to_num(0)
        return torch.where(valid[..., None], both, torch.zeros_like(both)).to(torch.int32), valid

    return radii


def inria_intersect_tile(kernels):
    """A replacement for the CPU kernels' intersect_tile with the original's tile rectangle (its getRect on
    pixel coordinates whose centres are integers, i.e. gsplat's minus 0.5): tiles [trunc((p - r) / 16),
    trunc((p + r + 15) / 16)), clamped to the grid. gsplat's kernel reads means2d and radii only for the
    rectangle, so it is given the mean and radius whose gsplat rectangle is that one."""
    intersect = kernels.intersect_tile

    @torch.no_grad()
    def intersect_tile(means2d, radii, depths, image_ids, gaussian_ids, I, tile_size, tile_width, tile_height, sort,
                       segmented):
        p = means2d - 0.5
        r = radii.to(means2d.dtype)
        low = torch.floor((p - r) / tile_size).clamp_min(0)  # trunc == floor here: negatives end at 0 anyway
        high = torch.floor((p + r + tile_size - 1) / tile_size).clamp_min(0)
        limits = torch.tensor([tile_width, tile_height], dtype=means2d.dtype)
        low, high = torch.minimum(low, limits).nan_to_num(0), torch.minimum(high, limits).nan_to_num(0)
        high = torch.maximum(high, low)
        usable = (radii > 0).all(-1, keepdim=True)
        fake_mean = (tile_size * (low + high) / 2).contiguous()
        fake_radii = torch.where(usable, tile_size * (high - low) / 2, torch.zeros_like(high)).to(radii.dtype)
        return intersect(fake_mean, fake_radii.contiguous(), depths, image_ids, gaussian_ids, I, tile_size, tile_width,
                         tile_height, sort, segmented)

    return intersect_tile


@contextmanager
def rasterizer(variant: str):
    """Within: render(..., backend=`backend`) runs the variant; yields that backend name."""
    if variant == "torch":
        yield "torch"
        return
    sys.path.insert(0, str(REPO / "tests"))
    import gsplat_cpu_kernels as kernels
    from fabric_mvsplat.model.decoder import rendering

    saved = {"module": sys.modules.get("gsplat.cuda._backend"), "resolve": rendering.resolve_backend,
             "cap": kernels.ALPHA_CAP, "radii": kernels._radii, "intersect": kernels.intersect_tile}
    if variant in ("gsplat_cap_0.99", "inria_footprint"):
        kernels.ALPHA_CAP = 0.99
    if variant == "inria_footprint":
        kernels._radii = inria_radii(kernels)
        kernels.intersect_tile = inria_intersect_tile(kernels)
    sys.modules["gsplat.cuda._backend"] = kernels.cpu_backend_module()  # gsplat imports _C from it at call time
    rendering.resolve_backend = lambda backend, device: backend  # gsplat on CPU tensors: the kernels are CPU ones
    try:
        yield "gsplat"
    finally:
        kernels.ALPHA_CAP, kernels._radii, kernels.intersect_tile = saved["cap"], saved["radii"], saved["intersect"]
        rendering.resolve_backend = saved["resolve"]
        if saved["module"] is None:
            sys.modules.pop("gsplat.cuda._backend", None)
        else:
            sys.modules["gsplat.cuda._backend"] = saved["module"]
        sys.path.remove(str(REPO / "tests"))


def compose(overrides: list[str], checkpoint: Path):
    from hydra import compose as hydra_compose, initialize_config_dir

    from fabric_mvsplat.config import load_config
    from fabric_mvsplat.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return load_config(hydra_compose("main", overrides=[*overrides, "mode=test", "dataset/view_sampler=evaluation",
                                                            f"checkpointing.load={checkpoint}"]))


@torch.no_grad()
def measure(cfg, lpips_weights: str | None, limit: int | None) -> dict:
    from fabric_mvsplat.checkpoint import load_weights
    from fabric_mvsplat.data import TestLoader
    from fabric_mvsplat.metrics import compute_psnr, compute_ssim
    from fabric_mvsplat.model.decoder import render
    from fabric_mvsplat.build import make_model

    model = make_model(cfg)
    load_weights(model, cfg.checkpointing.load, cfg.checkpointing.allow_unsafe_load)
    model.eval()
    lpips = None
    if lpips_weights is not None:
        from fabric_mvsplat.metrics.lpips import load_lpips

        lpips = load_lpips(lpips_weights)
    per_variant = {v: {"psnr": [], "ssim": [], "lpips": [], "alpha_over_0_99": []} for v in VARIANTS}
    pixel = {v: {"mean_abs": [], "max_abs": 0.0, "over_1_255": [], "psnr_to_torch": []} for v in VARIANTS[1:]}
    scenes = []
    for batch in TestLoader(cfg.dataset, cfg.data_loader.test, 0, 1):
        batch = model.data_shim(batch)
        context, target = batch["context"], batch["target"]
        image_shape = tuple(target["image"].shape[-2:])
        gaussians = model.encode(context, global_step=0)
        renders = {}
        for variant in VARIANTS:
            with rasterizer(variant) as backend:
                output = render(gaussians, (target["extrinsics"], target["intrinsics"], target["near"], target["far"]),
                                image_shape, backend=backend, use_principal_point=cfg.model.decoder.use_principal_point,
                                background_color=model.decoder.background_color)
            renders[variant] = output.color[0].float()
        truth = target["image"][0].float()
        for variant, image in renders.items():
            scores = per_variant[variant]
            scores["psnr"].append(float(compute_psnr(truth, image).mean()))
            scores["ssim"].append(float(compute_ssim(truth, image).mean()))
            if lpips is not None:
                scores["lpips"].append(float(lpips(image, truth, normalize=True).mean()))
        # Only Gaussians this opaque can be capped differently (0.99 vs 0.999).
        per_variant["torch"]["alpha_over_0_99"].append(float((gaussians.opacities[0] > 0.99).float().mean()))
        for variant in VARIANTS[1:]:
            difference = (renders[variant] - renders["torch"]).abs()
            stats = pixel[variant]
            stats["mean_abs"].append(float(difference.mean()))
            stats["max_abs"] = max(stats["max_abs"], float(difference.max()))
            stats["over_1_255"].append(float((difference.amax(dim=1) > 1 / 255).float().mean()))
            stats["psnr_to_torch"].append(float(compute_psnr(renders["torch"].clamp(0, 1),
                                                             renders[variant].clamp(0, 1)).mean()))
        scenes.append(batch["scene"][0])
        print(f"{batch['scene'][0]}: " + ", ".join(f"{v} {per_variant[v]['psnr'][-1]:.3f} dB" for v in VARIANTS),
              flush=True)
        if limit is not None and len(scenes) >= limit:
            break

    def mean(values):
        finite = [x for x in values if math.isfinite(x)]
        return sum(finite) / len(finite) if finite else None

    result = {"num_scenes": len(scenes), "scenes": scenes,
              "share_of_gaussians_with_opacity_over_0_99": mean(per_variant["torch"]["alpha_over_0_99"])}
    for variant in VARIANTS:
        result[variant] = {metric: mean(values) for metric, values in per_variant[variant].items()
                           if metric != "alpha_over_0_99" and values}
    for variant in VARIANTS[1:]:
        stats = pixel[variant]
        result[variant]["minus_torch"] = {metric: result[variant][metric] - result["torch"][metric]
                                          for metric in result["torch"]}
        result[variant]["pixels_vs_torch"] = {
            "mean_abs_difference": mean(stats["mean_abs"]), "max_abs_difference": stats["max_abs"],
            "share_of_pixels_off_by_more_than_1_255": mean(stats["over_1_255"]),
            "psnr_to_torch_render_db": mean(stats["psnr_to_torch"])}
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, overrides = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gsplat_conventions",
                                     description=__doc__.splitlines()[0],
                                     epilog="Hydra overrides for test mode follow a `--`.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--lpips-weights", help="folder with vgg16.pth and vgg.pth: also score LPIPS")
    parser.add_argument("--limit", type=int, help="score at most this many test scenes")
    parser.add_argument("--save", type=Path, help="write the result JSON here")
    args = parser.parse_args(own)
    env = environment_info()
    cfg = compose(overrides, args.checkpoint)
    started = datetime.datetime.now(datetime.timezone.utc)
    result = measure(cfg, args.lpips_weights, args.limit)
    record = {"case": "gsplat_conventions", "date": started.isoformat(timespec="seconds"),
              "checkpoint": str(args.checkpoint), "overrides": overrides, "environment": env,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "result": result}
    print(json.dumps(result, indent=1))
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
