"""How far the plane sweep can see: the context views' parallax at the cost volume's resolution.

The cost volume compares each context pixel with the other view's features where each depth candidate puts it, at
1/downscale_factor of the image. Depth can come from that match only where depths apart land pixels apart. Measured
per context pixel, in feature pixels: the reach (the near plane against the far one, the sweep's whole search
range) and, with ground-truth depth, the band (the true depth / 1.25 against x 1.25: what depth delta<1.25 asks of
the match). A plain colour plane sweep at the image's resolution, scored against the ground truth, says what
matching alone recovers from the pair. mode=inspect reports all three for one validation scene (docs/debugging.md,
"How far the plane sweep can see"); this module's command line, for every test scene, with the test split and view
sampler a test run would use:

    python -m fabric_mvsplat.debug.parallax +experiment=demo dataset/view_sampler=evaluation
"""

import argparse
import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..metrics.depth import compute_depth_errors
from ..model.encoder.cost_volume import (candidate_sample_grid, disparity_candidates, feature_intrinsics,
                                         relative_poses, shifted_features)

DELTA = 1.25  # the band's ratio: delta<1.25's
COLOUR_WINDOW = 3  # the colour sweep compares 3 x 3 windows: one pixel alone matches noise
CANDIDATES_AT_ONCE = 16


class SweepReach(NamedTuple):
    reach: Tensor  # [(v b), h, w] feature pixels a context pixel moves between the near and the far plane
    band: Tensor | None  # [N] feature pixels between truth / 1.25 and truth x 1.25, at the pixels with known depth
    colour_abs_rel: float | None  # the colour sweep's depth against the truth, where another view sees the pixel
    colour_delta: float | None  # its share of those pixels within a factor 1.25
    colour_seen: float | None  # the share of the pixels with known depth that another view sees (those scored)


def reprojections(intrinsics: Tensor, extrinsics: Tensor, depths: Tensor) -> list[Tensor]:
    """Where each context pixel lands in each other context view at the z-depths `depths` [b, v, d, h, w], as
    grid_sample coordinates (align_corners, -1..1 across the h x w grid): one [(v b), d, h, w, 2] per other view.
    intrinsics [b, v, 3, 3] (normalised), extrinsics [b, v, 4, 4] (camera-to-world)."""
    b, v, d, h, w = depths.shape
    k = feature_intrinsics(intrinsics, h, w)
    depths = rearrange(depths, "b v d h w -> (v b) d h w").float()
    return [candidate_sample_grid(k, pose, depths).view(v * b, d, h, w, 2) for pose in relative_poses(extrinsics)]


def shift_between_depths(intrinsics: Tensor, extrinsics: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """How far each context pixel moves in the other context view when its z-depth goes from `first` to `second`,
    in pixels of the depth maps' h x w grid. first and second [b, v, h, w]. -> [(v b), h, w]; with more than two
    views the largest shift over the other views."""
    h, w = first.shape[-2:]
    scale = torch.tensor([w - 1, h - 1], dtype=torch.float32, device=first.device) / 2
    grids = reprojections(intrinsics, extrinsics, torch.stack([first, second], dim=2))
    return torch.stack([((grid[:, 0] - grid[:, 1]) * scale).norm(dim=-1) for grid in grids]).amax(dim=0)


def colour_sweep_depth(images: Tensor, intrinsics: Tensor, extrinsics: Tensor, near: Tensor, far: Tensor,
                       candidates: int) -> tuple[Tensor, Tensor]:
    """Winner-take-all depth of a plane sweep over raw colours: at each pixel of each context view, the candidate
    (the cost volume's, linear in disparity) whose warped colours from the other views differ least from its own,
    summed over a 3 x 3 window. images [b, v, 3, H, W]. -> (depth [(v b), H, W], seen [(v b), H, W]: some other
    view sees the pixel at some candidate)."""
    b, v, _, h, w = images.shape
    disparities = disparity_candidates(near, far, candidates, torch.float32)  # [(v b), D, 1, 1]
    depths = (1 / disparities).expand(-1, -1, h, w)
    k = feature_intrinsics(intrinsics, h, w)
    reference = rearrange(images.float(), "b v c h w -> (v b) c h w")
    others, poses = shifted_features(images.float()), relative_poses(extrinsics)
    best_cost = torch.full((v * b, h, w), torch.inf, device=images.device)
    best = torch.zeros((v * b, h, w), dtype=torch.long, device=images.device)
    # A few candidates at a time: all their warped colours at once would take 1 GB at 256 x 256 with 128 candidates.
    for first in range(0, candidates, CANDIDATES_AT_ONCE):
        chunk = depths[:, first:first + CANDIDATES_AT_ONCE]
        count = chunk.shape[1]
        per_view = []
        for other, pose in zip(others, poses):
            grid = candidate_sample_grid(k, pose, chunk)  # [(v b), count*h, w, 2]
            inside = (grid.abs() <= 1).all(dim=-1).view(v * b, count, h, w)
            warped = F.grid_sample(other, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            difference = (warped.view(v * b, 3, count, h, w) - reference[:, :, None]).abs().sum(dim=1)
            window = F.avg_pool2d(difference, COLOUR_WINDOW, stride=1, padding=COLOUR_WINDOW // 2,
                                  count_include_pad=False)
            per_view.append(torch.where(inside, window, torch.nan))
        cost = torch.stack(per_view).nanmean(dim=0).nan_to_num(nan=torch.inf)  # [(v b), count, h, w]
        chunk_cost, chunk_best = cost.min(dim=1)
        better = chunk_cost < best_cost  # ties keep the earlier candidate
        best_cost = torch.where(better, chunk_cost, best_cost)
        best = torch.where(better, chunk_best + first, best)
    seen = torch.isfinite(best_cost)
    depth = torch.gather(depths, 1, best[:, None])[:, 0]
    return depth, seen


@torch.no_grad()
def sweep_reach(context: dict, downscale: int, candidates: int) -> SweepReach:
    """One batch's context views (image, intrinsics, extrinsics, near, far; depth [b, v, H, W] when known, 0 where
    unknown) -> SweepReach at 1/downscale of the image."""
    image, intrinsics, extrinsics = context["image"], context["intrinsics"].float(), context["extrinsics"].float()
    near, far = context["near"].float(), context["far"].float()
    b, v, _, h, w = image.shape
    planes = [value[..., None, None].expand(b, v, h, w) for value in (near, far)]
    reach = shift_between_depths(intrinsics, extrinsics, *planes) / downscale
    truth = context.get("depth")
    if truth is None:
        return SweepReach(reach, None, None, None, None)
    truth = truth.float()
    known = rearrange((truth > 0) & torch.isfinite(truth), "b v h w -> (v b) h w")
    safe = torch.where(truth > 0, truth, torch.ones_like(truth))
    band = shift_between_depths(intrinsics, extrinsics, safe / DELTA, safe * DELTA)[known] / downscale
    depth, _ = colour_sweep_depth(image, intrinsics, extrinsics, near, far, candidates)
    # Scored where the other view sees the pixel at its true depth: elsewhere no match exists to be found.
    scored = known & seen_at(intrinsics, extrinsics, safe)
    abs_rel, delta = compute_depth_errors(rearrange(torch.where(truth > 0, truth, 0), "b v h w -> (v b) h w"),
                                          depth, scored.float())
    counts = scored.sum(dim=(1, 2)).double()  # each view's mean weighed by its scored pixels
    weights = counts / counts.sum().clamp_min(1)
    return SweepReach(reach, band, float((abs_rel.double().nan_to_num() * weights).sum()),
                      float((delta.double().nan_to_num() * weights).sum()),
                      float(scored.sum() / known.sum().clamp_min(1)))


def seen_at(intrinsics: Tensor, extrinsics: Tensor, depth: Tensor) -> Tensor:
    """[(v b), h, w]: the context pixel at z-depth `depth` [b, v, h, w] lands inside another context view."""
    grids = reprojections(intrinsics, extrinsics, depth[:, :, None])
    return torch.stack([(grid[:, 0].abs() <= 1).all(dim=-1) for grid in grids]).any(dim=0)


# ------------------------------------------------------------------------------------------------ command line
def scene_rows(cfg) -> list[dict]:
    """One row per test scene of `cfg` (RootCfg): its key, context frames and SweepReach at the encoder's
    downscale factor and candidate count."""
    from tqdm import tqdm

    from ..data import TestLoader

    encoder = cfg.model.encoder
    loader = TestLoader(cfg.dataset, cfg.data_loader.test, 0, 1)
    rows = []
    for batch in tqdm(loader, total=len(loader), desc="plane sweep reach", unit="scene", disable=not sys.stderr.isatty()):
        for example, key in enumerate(batch["scene"]):
            context = {name: value[example:example + 1] for name, value in batch["context"].items()}
            rows.append({"scene": key, "context": context["index"][0].tolist(),
                         "reach": sweep_reach(context, encoder.downscale_factor, encoder.num_depth_candidates)})
    return rows


def table(rows: list[dict], downscale: int, candidates: int, shape: tuple[int, int]) -> list[str]:
    """The printed report: a line per scene, then all scenes' pixels together."""
    lines = [f"feature pixels at 1/{downscale} of {shape[0]}x{shape[1]}; medians over each scene's context pixels; the "
             f"colour sweep: {COLOUR_WINDOW}x{COLOUR_WINDOW} windows, {candidates} candidates, winner-take-all at the "
             "image's resolution, scored where the other view sees the pixel at its true depth",
             f"{'scene':<20} {'context':>9} {'near-far':>9} {'x/1.25-x*1.25':>14} {'band < 1 px':>12} "
             f"{'colour AbsRel':>14} {'delta<1.25':>11} {'seen':>6}"]
    for row in rows:
        reach = row["reach"]
        line = f"{row['scene'][:20]:<20} {str(row['context']).replace(' ', ''):>9} {float(reach.reach.median()):>9.2f}"
        if reach.band is not None:
            line += (f" {float(reach.band.median()):>14.2f} {100 * float((reach.band < 1).float().mean()):>11.1f}%"
                     f" {reach.colour_abs_rel:>14.3f} {reach.colour_delta:>11.3f} {100 * reach.colour_seen:>5.1f}%")
        lines.append(line)
    reaches = torch.cat([row["reach"].reach.flatten() for row in rows])
    bands = [row["reach"].band for row in rows if row["reach"].band is not None]
    summary = f"{'all ' + str(len(rows)) + ' scenes':<20} {'':>9} {float(reaches.median()):>9.2f}"
    if bands:
        band = torch.cat(bands)
        scored = [row["reach"] for row in rows if row["reach"].band is not None]
        summary += (f" {float(band.median()):>14.2f} {100 * float((band < 1).float().mean()):>11.1f}%"
                    f" {sum(r.colour_abs_rel for r in scored) / len(scored):>14.3f}"
                    f" {sum(r.colour_delta for r in scored) / len(scored):>11.3f}"
                    f" {100 * sum(r.colour_seen for r in scored) / len(scored):>5.1f}%  (colour: the scenes' mean)")
    return lines + [summary]


def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from ..config import CONFIG_DIR, load_config
    from ..config.command_line import check_overrides
    from ..errors import UserError

    parser = argparse.ArgumentParser(
        prog="python -m fabric_mvsplat.debug.parallax",
        description="How far the plane sweep can see in each test scene's context views: the feature pixels a context "
                    "pixel moves in the other view between the near and far planes and, with ground-truth depth, "
                    "between its true depth / 1.25 and x 1.25, and a colour plane sweep's depth scored against the "
                    "truth (docs/debugging.md, 'How far the plane sweep can see').",
        epilog="example: python -m fabric_mvsplat.debug.parallax +experiment=demo dataset/view_sampler=evaluation")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as python -m fabric_mvsplat.train takes them "
                        "(the dataset, view sampler, image shape and model.encoder's downscale_factor and "
                        "num_depth_candidates count)")
    overrides = parser.parse_args(sys.argv[1:] if argv is None else argv).overrides
    try:
        check_overrides(CONFIG_DIR, overrides)
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = load_config(compose("main", overrides=overrides))
        rows = scene_rows(cfg)
    except UserError as error:
        print(f"fabric_mvsplat.debug.parallax: {error}", file=sys.stderr)
        sys.exit(2)
    if not rows:
        print("fabric_mvsplat.debug.parallax: no test scene was usable (see the warnings above)", file=sys.stderr)
        sys.exit(3)
    encoder = cfg.model.encoder
    for line in table(rows, encoder.downscale_factor, encoder.num_depth_candidates, tuple(cfg.dataset.image_shape)):
        print(line)


if __name__ == "__main__":
    main()
