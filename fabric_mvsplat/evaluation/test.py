"""Test mode (spec §8.4): render the evaluation index, score it, write the original's files.

Scenes are sharded across ranks by the test loader; each rank scores its share and the
per-scene results are gathered on rank 0, sorted by scene key, so 1 and N ranks write the
same numbers.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from tqdm import tqdm

from ..distributed import gather_objects, show_progress_bar
from ..types import BatchedExample
from ..metrics import compute_psnr, compute_ssim

if TYPE_CHECKING:
    from lightning_fabric import Fabric

    from ..config import RootCfg
    from ..model.wrapper import MVSplat


@dataclass
class SceneScores:
    scene: str
    psnr: float
    ssim: float
    lpips: float | None
    # PSNR of predicting every target pixel as the mean colour of the context images: the floor a
    # model must clear to show it learned anything beyond the average colour.
    psnr_mean_colour: float


@dataclass
class Timings:
    """Wall-clock seconds per call, CUDA synchronised; the first `skip` batches are warm-up."""

    skip: int
    encoder: list[float] = field(default_factory=list)
    decoder: list[float] = field(default_factory=list)  # per rendered view
    batches_seen: int = 0

    def record(self, name: str, seconds: float, calls: int = 1) -> None:
        if self.batches_seen >= self.skip:
            getattr(self, name).extend([seconds / calls] * calls)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_test(fabric: "Fabric", cfg: "RootCfg", model: "MVSplat", test_loader: Iterable[BatchedExample]) -> dict | None:
    """Evaluate `model` over `test_loader`, writing under `test.output_path/<wandb.name>/` (the original's
    place, independent of the run's output_dir); returns the averaged scores on rank 0 (None elsewhere)."""
    from .media import save_image, save_video

    test_cfg = cfg.test
    name = str(cfg.wandb.get("name", "default")) if isinstance(cfg.wandb, dict) else "default"
    out_dir = Path(test_cfg.output_path) / name
    module = model.module if hasattr(model, "module") else model
    device = fabric.device
    module.eval()
    if test_cfg.compute_scores and module.lpips_metric is None:
        fabric.print("test: LPIPS is skipped because test.lpips_weights (and loss.lpips.weights) is null; "
                     "PSNR and SSIM are computed.")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    scores: list[SceneScores] = []
    timings = Timings(skip=test_cfg.eval_time_skip_steps)
    progress = tqdm(desc="test scenes", unit="scene", disable=not (fabric.global_rank == 0 and show_progress_bar()))
    for batch in test_loader:
        batch = fabric.to_device(batch)
        batch = module.data_shim(batch)
        context, target = batch["context"], batch["target"]
        image_shape = tuple(target["image"].shape[-2:])
        num_views = target["image"].shape[1]

        _synchronize(device)
        start = time.perf_counter()
        with fabric.autocast():  # trainer.precision, as in training; the decoder renders in fp32
            gaussians = module.encode(context, global_step=0)
        _synchronize(device)
        timings.record("encoder", time.perf_counter() - start)

        start = time.perf_counter()
        output = module.render_views(gaussians, target, image_shape)
        _synchronize(device)
        timings.record("decoder", time.perf_counter() - start, calls=num_views)
        timings.batches_seen += 1

        for b, scene in enumerate(batch["scene"]):
            rendered = output.color[b].float().clamp(0, 1)  # [V, 3, H, W]
            ground_truth = target["image"][b].float()
            if test_cfg.save_image:
                for frame, image in zip(target["index"][b].tolist(), rendered):
                    save_image(image, out_dir / scene / "color" / f"{frame:06d}.png")
            if test_cfg.save_video:
                first, last = context["index"][b, 0].item(), context["index"][b, -1].item()
                save_video(rendered, out_dir / "video" / f"{scene}_frame_{first}_{last}.mp4")
            if test_cfg.save_gaussians:
                from ..model.ply_export import export_ply

                export_ply(gaussians, out_dir / "gaussians" / f"{scene}.ply", batch_index=b)
            if test_cfg.compute_scores:
                lpips = None
                if module.lpips_metric is not None:
                    lpips = float(module.lpips_metric(rendered, ground_truth, normalize=True).mean())
                mean_colour = context["image"][b].float().mean(dim=(0, 2, 3))[None, :, None, None]
                scores.append(SceneScores(scene, float(compute_psnr(ground_truth, rendered).mean()),
                                          float(compute_ssim(ground_truth, rendered).mean()), lpips,
                                          float(compute_psnr(ground_truth, mean_colour.expand_as(ground_truth)).mean())))
        progress.update(len(batch["scene"]))
    progress.close()

    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    per_rank = gather_objects(fabric, ([vars(s) for s in scores], timings.encoder, timings.decoder, peak_memory))
    if fabric.global_rank != 0:
        return None
    all_scores = sorted((s for rank in per_rank for s in rank[0]), key=lambda s: s["scene"])
    all_encoder = [t for rank in per_rank for t in rank[1]]
    all_decoder = [t for rank in per_rank for t in rank[2]]
    peak_memory = max(rank[3] for rank in per_rank)
    averages = write_test_results(out_dir, all_scores, all_encoder, all_decoder, peak_memory, test_cfg.compute_scores)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in averages.items() if isinstance(v, float))
    fabric.print(f"test: {len(all_scores)} scenes -> {out_dir}: {summary}")
    return averages


def write_test_results(out_dir: Path, scores: list[dict], encoder_times: list[float], decoder_times: list[float],
                       peak_memory: int, compute_scores: bool) -> dict:
    """The original's files: scores_<metric>_all.json (per-scene lists), scores_all_avg.json,
    benchmark.json, peak_memory.json; plus scores_per_scene.json with the scene keys."""
    out_dir.mkdir(parents=True, exist_ok=True)
    averages: dict = {}
    if compute_scores:
        metrics = ["psnr", "ssim"] + (["lpips"] if scores and scores[0]["lpips"] is not None else [])
        for metric in metrics:
            values = [s[metric] for s in scores]
            (out_dir / f"scores_{metric}_all.json").write_text(json.dumps(values))
            averages[metric] = sum(values) / max(len(values), 1)
        averages["psnr_mean_colour_baseline"] = sum(s["psnr_mean_colour"] for s in scores) / max(len(scores), 1)
        (out_dir / "scores_per_scene.json").write_text(json.dumps(scores, indent=1))
    for tag, times in (("encoder", encoder_times), ("decoder", decoder_times)):
        averages[tag] = [len(times), sum(times) / len(times) if times else 0.0]
    averages["num_scenes"] = len(scores)
    (out_dir / "scores_all_avg.json").write_text(json.dumps(averages, indent=1))
    (out_dir / "benchmark.json").write_text(json.dumps({"encoder": encoder_times, "decoder": decoder_times}))
    (out_dir / "peak_memory.json").write_text(json.dumps({"allocated_bytes.all.peak": peak_memory}))
    return averages
