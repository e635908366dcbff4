"""Test mode: render the evaluation index, score it, write the original's files.

Scenes are sharded across ranks by the test loader; each rank scores its share and the
per-scene results are gathered on every rank, sorted by scene key, so 1 and N ranks write the
same numbers. Metrics follow the original: PSNR clips render and ground truth to [0, 1], SSIM
and LPIPS see the unclamped render. Beside them: two baselines (the mean context colour; the
context image nearest in frame index) and, where the chunks hold ground-truth depth (our
synthetic data), the expected depth's AbsRel and delta<1.25.
"""

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from tqdm import tqdm

from ..data.chunks import CORRUPT_REASONS, INDEX_REASONS
from ..distributed import gather_objects, show_progress_bar
from ..config import LPIPS_NOT_COMPUTED
from ..errors import EmptyEvaluationError
from ..metrics import (compute_depth_errors, compute_psnr, compute_ssim, depth_error_sums_by_true_depth,
                       depth_errors_by_true_depth, nearest_context_images, true_depth_edges)
from ..types import BatchedExample
from ..visualization.layout import colorize_depth

if TYPE_CHECKING:
    from lightning_fabric import Fabric

    from ..config import RootCfg
    from ..model.mvsplat import MVSplat


@dataclass
class SceneViews:
    """One scene of a test batch, as scoring and the saved images read it."""

    scene: str
    rendered: torch.Tensor  # [V, 3, H, W], unclamped (the original's SSIM/LPIPS input)
    ground_truth: torch.Tensor  # [V, 3, H, W]
    context_images: torch.Tensor  # [Vc, 3, H, W]
    context_indices: torch.Tensor  # [Vc] frame indices
    target_indices: torch.Tensor  # [V] frame indices
    depth: torch.Tensor | None = None  # rendered expected depth [V, H, W]
    alpha: torch.Tensor | None = None  # accumulated opacity [V, H, W]
    depth_truth: torch.Tensor | None = None  # the chunks' depth [V, H, W], where the data has it
    near_far: tuple[float, float] | None = None  # the targets' near and far planes: the bins of true depth


@dataclass
class RankResults:
    """What one rank sends to the others at the end of test mode (plain values: it is pickled)."""

    scores: list[dict]  # vars() of this rank's SceneScores
    timings: dict[str, list[float]]  # per-call seconds under TIMING_KEYS
    peak_memory: int  # bytes (CUDA), 0 elsewhere
    rendered_scenes: int
    load_skips: dict[str, int]  # scenes the loader skipped, by reason
    file_names: dict[str, str]  # scene key -> the name of its files (data.scene_names)


@dataclass
class SceneScores:
    """One scene's means over its target views."""

    scene: str
    psnr: float
    ssim: float
    lpips: float | None
    # PSNR of predicting every target pixel as the mean colour of the context images: the floor a
    # model must clear to show it learned anything beyond the average colour.
    psnr_mean_colour: float
    # Copying the context image nearest in frame index to each target: what a model that learned no
    # geometry at all can already score when the views are close together.
    psnr_nearest_context: float
    ssim_nearest_context: float
    # Expected depth against the chunks' ground truth (None where the scene has none).
    depth_abs_rel: float | None = None
    depth_delta_1_25: float | None = None
    # Per bin of true depth (true_depth_edges(near, far), log-spaced): [pixels, sum of |p - t| / t, sum of log(p / t),
    # pixels within a factor 1.25], summed over the scene's target pixels; scores_all_avg.json adds them up.
    depth_true_depth_edges: list[float] | None = None
    depth_sums_by_true_depth: list[list[float]] | None = None


TIMING_NOTE = (
    "encoder / decoder: the original's method (host clock, no CUDA synchronisation, so on CUDA an encoder time "
    "can end before its kernels do; decoder per target view, colour only); *_synchronised: the same calls timed "
    "on the device (CUDA events read after synchronising; on CPU the host clock); scene_synchronised: encoder + "
    "every target view's colour, synchronised. The first test.eval_time_skip_steps batches are left out; depth "
    "and everything after the colour render are outside the timed part.")


# Per call: the encoder per batch, the decoder per rendered view, scene_synchronised the encoder and all of a
# batch's views together. encoder/decoder are the original's measurement, the _synchronised ones ours (TIMING_NOTE).
TIMING_KEYS = ("encoder", "decoder", "encoder_synchronised", "decoder_synchronised", "scene_synchronised")


@dataclass
class Timings:
    """Seconds per call under TIMING_KEYS; the first `skip` batches are warm-up."""

    skip: int
    seconds: dict[str, list[float]] = field(default_factory=lambda: {key: [] for key in TIMING_KEYS})
    batches_seen: int = 0

    def record(self, name: str, seconds: float, calls: int = 1) -> None:
        if self.batches_seen >= self.skip:
            self.seconds[name].extend([seconds / calls] * calls)


class BatchClock:
    """Marks between the timed calls of one batch, read twice: the host clock as the original reads it (no
    synchronisation, the marks do not wait for the device) and the device's own time between the marks (CUDA
    events, which the host does not wait for either, so the first reading is not disturbed)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def start(self) -> None:
        _synchronize(self.device)  # the previous batch's work is not this batch's (the original's metrics synced)
        self.host, self.events = [time.perf_counter()], []
        if self.cuda:
            self.events.append(torch.cuda.Event(enable_timing=True))
            self.events[-1].record()

    def mark(self) -> None:
        self.host.append(time.perf_counter())
        if self.cuda:
            self.events.append(torch.cuda.Event(enable_timing=True))
            self.events[-1].record()

    def finish(self) -> tuple[list[float], list[float], float]:
        """-> (host intervals, device intervals, host seconds from start to the device finishing)."""
        _synchronize(self.device)
        total = time.perf_counter() - self.host[0]
        host = [b - a for a, b in zip(self.host, self.host[1:])]
        if not self.cuda:
            return host, host, total
        device = [a.elapsed_time(b) / 1000 for a, b in zip(self.events, self.events[1:])]
        return host, device, total


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nan_mean(values: torch.Tensor) -> float | None:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else None


def score_scene(views: SceneViews, lpips_metric=None) -> SceneScores:
    """The scene's means over its target views; the depth errors only where it has ground-truth depth."""
    scene, rendered, ground_truth = views.scene, views.rendered, views.ground_truth
    context_images, depth, alpha, depth_truth = views.context_images, views.depth, views.alpha, views.depth_truth
    lpips = None
    if lpips_metric is not None:
        lpips = float(lpips_metric(rendered, ground_truth, normalize=True).mean())
    mean_colour = context_images.mean(dim=(0, 2, 3))[None, :, None, None].expand_as(ground_truth)
    nearest = nearest_context_images(context_images, views.context_indices, views.target_indices)
    scores = SceneScores(scene, float(compute_psnr(ground_truth, rendered).mean()),
                         float(compute_ssim(ground_truth, rendered).mean()), lpips,
                         float(compute_psnr(ground_truth, mean_colour).mean()),
                         float(compute_psnr(ground_truth, nearest).mean()),
                         float(compute_ssim(ground_truth, nearest).mean()))
    if depth_truth is not None and depth is not None and alpha is not None:
        abs_rel, delta = compute_depth_errors(depth_truth, depth, alpha)
        scores.depth_abs_rel, scores.depth_delta_1_25 = _nan_mean(abs_rel), _nan_mean(delta)
        if views.near_far is not None:
            scores.depth_true_depth_edges = true_depth_edges(*views.near_far)
            scores.depth_sums_by_true_depth = depth_error_sums_by_true_depth(depth_truth, depth, alpha,
                                                                             scores.depth_true_depth_edges)
    return scores


def skip_summary(skip_reasons: dict[str, int]) -> dict[str, int]:
    """Skip counts by reason -> the four kinds reported: not/null in the index, corrupt, filtered."""
    kinds = Counter({"not_in_index": 0, "null_in_index": 0, "corrupt": 0, "filtered": 0})
    for reason, count in skip_reasons.items():
        kind = reason if reason in INDEX_REASONS else "corrupt" if reason in CORRUPT_REASONS else "filtered"
        kinds[kind] += count
    return dict(kinds)


def test_results_dir(cfg: "RootCfg") -> Path:
    """Where test mode writes: test.output_path/<wandb.name> (the original's place)."""
    name = str(cfg.wandb.get("name", "default")) if isinstance(cfg.wandb, dict) else "default"
    return Path(cfg.test.output_path) / name


@torch.no_grad()
def run_test(fabric: "Fabric", cfg: "RootCfg", model: "MVSplat", test_loader: Iterable[BatchedExample]) -> dict | None:
    """Evaluate `model` over `test_loader`, writing under `test.output_path/<wandb.name>/` (the original's
    place, independent of the run's output_dir); returns the averaged scores on rank 0 (None elsewhere).

    Raises EmptyEvaluationError on every rank when no scene was rendered (or none scored with
    test.compute_scores=true), naming the skip counts by reason, after writing scores_all_avg.json.
    """
    from .media import save_video

    test_cfg = cfg.test
    out_dir = test_results_dir(cfg)
    module = model.module if hasattr(model, "module") else model
    device = fabric.device
    module.eval()
    lpips_missing = LPIPS_NOT_COMPUTED if test_cfg.compute_scores and module.lpips_metric is None else None
    if lpips_missing is not None:
        fabric.print(f"test: {lpips_missing}. PSNR and SSIM are computed.")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    scores: list[SceneScores] = []
    file_names: dict[str, str] = {}  # scene key -> the name of its files (the key itself when it is a safe name)
    rendered_scenes = 0
    timings = Timings(skip=test_cfg.eval_time_skip_steps)
    clock = BatchClock(device)
    progress = tqdm(desc="test scenes", unit="scene", disable=not (fabric.global_rank == 0 and show_progress_bar()))
    for batch in test_loader:
        batch = fabric.to_device(batch)
        batch = module.data_shim(batch)
        context, target = batch["context"], batch["target"]
        image_shape = tuple(target["image"].shape[-2:])
        num_views = target["image"].shape[1]
        has_depth = "depth" in target

        # Timed as the original: the encoder, then the colour render of every target view (no depth).
        clock.start()
        with fabric.autocast():  # trainer.precision, as in training; the decoder renders in fp32
            gaussians = module.encode(context, global_step=0)
        clock.mark()
        output = module.render_views(gaussians, target, image_shape)
        clock.mark()
        (host_encoder, host_decoder), (device_encoder, device_decoder), scene_seconds = clock.finish()
        timings.record("encoder", host_encoder)
        timings.record("decoder", host_decoder, calls=num_views)
        timings.record("encoder_synchronised", device_encoder)
        timings.record("decoder_synchronised", device_decoder, calls=num_views)
        timings.record("scene_synchronised", scene_seconds)
        timings.batches_seen += 1
        # The expected depth, outside the timed part, only where it is scored or saved.
        depth_output = None
        if has_depth or test_cfg.save_image:
            depth_output = module.render_views(gaussians, target, image_shape, depth_mode="expected_depth")

        for b, (scene, file_name) in enumerate(zip(batch["scene"], batch["file_name"])):
            views = SceneViews(
                scene, rendered=output.color[b].float(), ground_truth=target["image"][b].float(),
                context_images=context["image"][b].float(), context_indices=context["index"][b],
                target_indices=target["index"][b],
                depth=depth_output.depth[b].float() if depth_output is not None else None,
                alpha=depth_output.alpha[b].float() if depth_output is not None else None,
                depth_truth=target["depth"][b].float() if has_depth else None,
                near_far=(float(target["near"][b, 0]), float(target["far"][b, 0])))
            file_names[scene] = file_name
            if test_cfg.save_image:
                save_scene_images(inside(out_dir, file_name), views, target["near"][b, 0], target["far"][b, 0])
            if test_cfg.save_video:
                first, last = context["index"][b, 0].item(), context["index"][b, -1].item()
                save_video(views.rendered, inside(out_dir / "video", f"{file_name}_frame_{first}_{last}.mp4"))
            if test_cfg.save_gaussians:
                from ..model.ply_export import export_ply

                export_ply(gaussians, inside(out_dir / "gaussians", f"{file_name}.ply"), batch_index=b)
            rendered_scenes += 1
            if test_cfg.compute_scores:
                scores.append(score_scene(views, module.lpips_metric))
        progress.update(len(batch["scene"]))
    progress.close()

    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    load_skips = dict(getattr(test_loader, "skip_counts", {}))
    per_rank: list[RankResults] = gather_objects(fabric, RankResults(
        [vars(s) for s in scores], timings.seconds, peak_memory, rendered_scenes, load_skips, file_names))
    skip_reasons = Counter(getattr(test_loader, "index_skip_counts", {}))  # the same on every rank: once
    for rank in per_rank:
        skip_reasons.update(rank.load_skips)
    counts = {"rendered": sum(rank.rendered_scenes for rank in per_rank),
              "scored": sum(len(rank.scores) for rank in per_rank),
              "skipped": skip_summary(skip_reasons), "skip_reasons": dict(sorted(skip_reasons.items()))}
    averages = None
    if fabric.global_rank == 0:
        all_scores = sorted((s for rank in per_rank for s in rank.scores), key=lambda s: s["scene"])
        all_timings = {key: [t for rank in per_rank for t in rank.timings[key]] for key in TIMING_KEYS}
        peak_memory = max(rank.peak_memory for rank in per_rank)
        averages = write_test_results(out_dir, all_scores, all_timings, peak_memory, test_cfg.compute_scores,
                                      counts, lpips_missing)
        write_file_names(out_dir, {key: name for rank in per_rank for key, name in rank.file_names.items()})
        summary = ", ".join(f"{k} {v:.4f}" for k, v in averages.items() if isinstance(v, float))
        skipped = ", ".join(f"{kind} {n}" for kind, n in counts["skipped"].items())
        fabric.print(f"test: rendered {counts['rendered']} scenes, scored {counts['scored']}, skipped {skipped} "
                     f"-> {out_dir}" + (f": {summary}" if summary else ""))
        if averages.get("depth_by_true_depth"):
            fabric.print("test depth by true depth (AbsRel, predicted / true, share of the pixels): " + " | ".join(
                f"{row['from']:.3g}-{row['to']:.3g} {row['abs_rel']:.3f} x{row['ratio']:.2f} {100 * row['share']:.0f}%"
                for row in averages["depth_by_true_depth"] if row["abs_rel"] is not None))
        fabric.print(timing_lines(averages, test_cfg.eval_time_skip_steps))
    if counts["rendered"] == 0 or (test_cfg.compute_scores and counts["scored"] == 0):
        reasons = ", ".join(f"{reason}: {n}" for reason, n in counts["skip_reasons"].items()) or "none skipped"
        raise EmptyEvaluationError(
            f"test mode {'scored' if test_cfg.compute_scores else 'rendered'} no scene ({reasons}). Check that "
            "dataset.roots holds test chunks and that the evaluation index (dataset.view_sampler.index_path) "
            "names their keys; under dataset.test_times_per_scene=T > 1 its keys must be <scene>_00 .. "
            "<scene>_<T-1> (the DTU index layout).")
    return averages


def inside(folder: Path, name: str) -> Path:
    """folder / name, where name must be one plain path component (data.scene_names makes scene keys so): a
    last guard that no file of test mode is ever written outside its folder."""
    path = folder / name
    if name in ("", ".", "..") or "\0" in name or path.parent != folder or Path(name).is_absolute():
        raise ValueError(f"refusing to write {name!r} outside {folder}: not a plain file name")
    return path


def write_file_names(out_dir: Path, file_names: dict[str, str]) -> None:
    """scene_file_names.json: {scene key: the name of its files}, and one line for keys that were renamed
    (not plain file names: a path, '..', a reserved or overlong name)."""
    renamed = {key: name for key, name in file_names.items() if key != name}
    (out_dir / "scene_file_names.json").write_text(json.dumps(dict(sorted(file_names.items())), indent=1))
    if renamed:
        examples = ", ".join(f"{key!r} -> {name}" for key, name in list(renamed.items())[:3])
        print(f"fabric_mvsplat: {len(renamed)} scene key(s) are not plain file names and were renamed ({examples}"
              f"{' ...' if len(renamed) > 3 else ''}); every key's name is in {out_dir / 'scene_file_names.json'}",
              file=sys.stderr)


def save_scene_images(scene_dir: Path, views: SceneViews, near: torch.Tensor, far: torch.Tensor) -> None:
    """<scene>/color/<frame>.png as the original, plus what a person compares it with without the dataset:
    context/, ground_truth/, depth/ (log-scaled colours between near and far) and depth_ground_truth/."""
    from .media import save_image

    for frame, image in zip(views.context_indices.tolist(), views.context_images):
        save_image(image.float(), scene_dir / "context" / f"{frame:06d}.png")
    depth_images = colorize_depth(views.depth.float(), near, far)
    truth_images = colorize_depth(views.depth_truth, near, far) if views.depth_truth is not None else None
    for i, frame in enumerate(views.target_indices.tolist()):
        save_image(views.rendered[i], scene_dir / "color" / f"{frame:06d}.png")
        save_image(views.ground_truth[i], scene_dir / "ground_truth" / f"{frame:06d}.png")
        save_image(depth_images[i], scene_dir / "depth" / f"{frame:06d}.png")
        if truth_images is not None:
            save_image(truth_images[i], scene_dir / "depth_ground_truth" / f"{frame:06d}.png")


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else math.nan


def timing_lines(averages: dict, skipped_batches: int) -> str:
    """The two timings, labelled, for the console."""
    def ms(key: str) -> str:
        calls, seconds = averages[key]
        return f"{seconds * 1000:.1f} ms" if calls else "n/a"

    after = f"{averages['encoder'][0]} batch(es) after {skipped_batches} warm-up batch(es)"
    return (f"test timing, the original's method (host clock, not synchronised; {after}): encoder {ms('encoder')}, "
            f"colour render {ms('decoder')} per view\n"
            f"test timing, synchronised: encoder {ms('encoder_synchronised')}, colour render "
            f"{ms('decoder_synchronised')} per view, encoder + all target views {ms('scene_synchronised')} per "
            "scene")


def errors_by_true_depth(scores: list[dict]) -> list[dict] | None:
    """All scenes' target pixels together, per bin of true depth (metrics.depth_errors_by_true_depth); None when
    the scenes' near/far differ (dataset.baseline_scale_bounds), which gives each scene other bins."""
    if any(s.get("depth_sums_by_true_depth") is None for s in scores):
        return None
    edges = scores[0]["depth_true_depth_edges"]
    if any(not torch.allclose(torch.tensor(s["depth_true_depth_edges"]), torch.tensor(edges)) for s in scores):
        return None
    sums = torch.tensor([s["depth_sums_by_true_depth"] for s in scores], dtype=torch.float64).sum(dim=0)
    return depth_errors_by_true_depth(sums.tolist(), edges)


def write_test_results(out_dir: Path, scores: list[dict], timings: dict[str, list[float]], peak_memory: int,
                       compute_scores: bool, counts: dict | None = None, lpips_missing: str | None = None) -> dict:
    """The original's files: scores_<metric>_all.json (per-scene lists), scores_all_avg.json,
    benchmark.json, peak_memory.json; plus scores_per_scene.json with the scene keys.

    timings: per-call seconds under TIMING_KEYS. scores_all_avg.json holds [calls, mean seconds] for each
    (encoder/decoder as the original's, the _synchronised ones ours, timing_note saying which is which), the
    scene counts (num_rendered, num_scored = num_scenes, num_skipped by kind, skip_reasons), the baselines, for
    scenes with ground-truth depth depth_abs_rel and depth_delta_1_25 with num_scenes_with_depth and
    depth_by_true_depth (the errors per bin of true depth, all their target pixels together), and, when
    LPIPS was not computed, "lpips": null with the reason in "lpips_not_computed".
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    averages: dict = {}
    if compute_scores:
        metrics = ["psnr", "ssim"] + (["lpips"] if scores and scores[0]["lpips"] is not None else [])
        for metric in metrics:
            values = [s[metric] for s in scores]
            (out_dir / f"scores_{metric}_all.json").write_text(json.dumps(values))
            averages[metric] = _mean(values)
        if lpips_missing is not None:
            averages["lpips"] = None
            averages["lpips_not_computed"] = lpips_missing
        averages["psnr_mean_colour_baseline"] = _mean([s["psnr_mean_colour"] for s in scores])
        averages["psnr_nearest_context_baseline"] = _mean([s["psnr_nearest_context"] for s in scores])
        averages["ssim_nearest_context_baseline"] = _mean([s["ssim_nearest_context"] for s in scores])
        with_depth = [s for s in scores if s.get("depth_abs_rel") is not None]
        if with_depth:
            averages["depth_abs_rel"] = _mean([s["depth_abs_rel"] for s in with_depth])
            averages["depth_delta_1_25"] = _mean([s["depth_delta_1_25"] for s in with_depth])
            averages["num_scenes_with_depth"] = len(with_depth)
            by_depth = errors_by_true_depth(with_depth)
            if by_depth is not None:
                averages["depth_by_true_depth"] = by_depth
        (out_dir / "scores_per_scene.json").write_text(json.dumps(scores, indent=1))
    for key in TIMING_KEYS:
        times = timings.get(key, [])
        averages[key] = [len(times), sum(times) / len(times) if times else 0.0]
    averages["timing_note"] = TIMING_NOTE
    averages["num_scenes"] = len(scores)
    if counts is not None:
        averages["num_rendered"] = counts["rendered"]
        averages["num_scored"] = counts["scored"]
        averages["num_skipped"] = counts["skipped"]
        averages["skip_reasons"] = counts["skip_reasons"]
    (out_dir / "scores_all_avg.json").write_text(json.dumps(averages, indent=1))
    (out_dir / "benchmark.json").write_text(json.dumps({key: timings.get(key, []) for key in TIMING_KEYS}))
    (out_dir / "peak_memory.json").write_text(json.dumps({"allocated_bytes.all.peak": peak_memory}))
    return averages
