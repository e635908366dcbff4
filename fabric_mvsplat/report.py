"""The end-of-run lines of a training run: what ran, how fast, how good, where things are, what next."""

import json
import shlex
from pathlib import Path

from lightning_fabric import Fabric

from .config import LATEST_CHECKPOINT, RootCfg
from .data.scene_names import scene_file_name
from .loop import EXIT_STOPPED_BY_SIGNAL, TrainingSummary
from .model.encoder.plane_sweep import is_collapsed
from .shell_command import hydra_overrides, override_key, train_command


def launch_command(settings: dict[str, str], world_size: int = 1, num_nodes: int = 1) -> str:
    """The command line of this run (Hydra's overrides) with `settings` replacing or adding keys, safe to paste
    (shell_command)."""
    kept = [o for o in hydra_overrides() if override_key(o) not in settings]
    return train_command(kept, settings, world_size, num_nodes)


def report_end(fabric: Fabric, cfg: RootCfg, summary: TrainingSummary, output_dir: Path) -> None:
    """Rank 0 prints the summary, then the command that resumes (after a stop signal) or tests the run."""
    if fabric.global_rank != 0:
        return
    steps = summary.end_step - summary.start_step
    seconds = summary.train_seconds
    rate = summary.scenes * fabric.world_size / seconds if seconds > 0 else 0.0  # ranks train alike
    last_val = summary.val.get("val/psnr")
    lines = [f"steps {summary.start_step} -> {summary.end_step} ({steps} in {seconds / 60:.1f} min of "
             f"training, ~{rate:.2f} scenes/s over {fabric.world_size} rank(s))"]
    if summary.amp_skipped_steps:
        lines.append(f"16-mixed: the GradScaler skipped {summary.amp_skipped_steps} update(s) (overflow)")
    if last_val is not None:
        lines.append(f"validation PSNR: last {last_val:.2f}, best {summary.best_val_psnr:.2f}")
        abs_rel, delta = summary.val.get("val/depth_abs_rel"), summary.val.get("val/depth_delta_1_25")
        if abs_rel is not None:  # datasets with ground-truth depth (the synthetic demo's)
            lines.append(f"validation depth: AbsRel {abs_rel:.3f}, delta<1.25 {delta:.3f}" + (
                " (every Gaussian at the far plane? see docs/demo.md)" if abs_rel > 1 else ""))
        share = summary.val.get("val/plane_sweep_commonest_share")
        if share is not None and is_collapsed(share):
            lines.append(f"validation plane sweep: one depth candidate is the most probable at {share:.0%} of the "
                         "context pixels, so the depth comes from the refinement U-Net's guess from one image, not "
                         "from matching the views (docs/debugging.md, 'A plane sweep that no longer matches')")
    elif summary.val:
        lines.append("last validation: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(summary.val.items())))
    last = summary.last_checkpoint
    lines.append(f"checkpoints: {output_dir / 'checkpoints'}" + (f" (last: {last.name})" if last is not None else ""))
    lines.append(f"TensorBoard: {shlex.join(['tensorboard', '--logdir', str(summary.tensorboard)])}")
    if summary.stopped_by is not None:
        lines.insert(0, f"stopped by {summary.stopped_by} after step {summary.end_step}: checkpoint {last}")
        lines.append("resume with: " + launch_command({"output_dir": str(output_dir),
                                                     "checkpointing.load": LATEST_CHECKPOINT},
                                                     fabric.world_size, cfg.trainer.num_nodes))
        lines.append(f"exit code {EXIT_STOPPED_BY_SIGNAL} (stopped by a signal after saving; run the same command to resume)")
    elif last is not None:
        lines.append("test it with: " + launch_command({"mode": "test", "checkpointing.load": str(last),
                                                        "dataset/view_sampler": "evaluation",
                                                        "test.compute_scores": "true"},
                                                       fabric.world_size, cfg.trainer.num_nodes))
        render = render_command(cfg, last, output_dir)
        if render is not None:
            lines.append("render it (Gaussians, video, depth; then the viewer): " + render)
    print("\n".join("fabric_mvsplat: " + line for line in lines), flush=True)


def render_command(cfg: RootCfg, checkpoint: Path, output_dir: Path) -> str | None:
    """`fabric_mvsplat.render` of `checkpoint` on the first test scene of dataset.roots[0] (shell-quoted), or None
    when that root has no test index."""
    root = Path(cfg.dataset.roots[0])
    try:
        key = next(iter(json.loads((root / "test" / "index.json").read_text())), None)
    except (OSError, ValueError):
        return None
    if key is None:
        return None
    return shlex.join(["python", "-m", "fabric_mvsplat.render", str(checkpoint), "--chunks", str(root),
                       "--scene", str(key), "--output", str(Path(output_dir) / "render" / scene_file_name(str(key)))])
