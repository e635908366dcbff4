"""The output-folder policy: which checkpoint `checkpointing.load=latest` means, what a fresh run refuses, where
the run's config lands, and the clean-up of checkpoint writes an earlier kill interrupted."""

import logging
import sys
from pathlib import Path

from lightning_fabric import Fabric

from .checkpoint import list_checkpoints, remove_stray_temporaries
from .config import LATEST_CHECKPOINT, RootCfg
from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def resolve_latest(cfg: RootCfg, output_dir: Path) -> None:
    """checkpointing.load=latest: the newest checkpoint in output_dir/checkpoints, or a fresh start when
    there is none (training), so a requeued job runs the same command line."""
    if cfg.checkpointing.load != LATEST_CHECKPOINT:
        return
    found = list_checkpoints(Path(output_dir) / "checkpoints")
    if found:
        cfg.checkpointing.load = str(found[-1][1])
        print(f"fabric_mvsplat: checkpointing.load={LATEST_CHECKPOINT} -> {found[-1][1]}", file=sys.stderr)
    elif cfg.mode == "test":
        raise CheckpointError(f"checkpointing.load={LATEST_CHECKPOINT} found no checkpoint in "
                              f"{Path(output_dir) / 'checkpoints'}; point checkpointing.load at a checkpoint file")
    else:
        cfg.checkpointing.load = None
        print(f"fabric_mvsplat: checkpointing.load={LATEST_CHECKPOINT}: no checkpoint in "
              f"{Path(output_dir) / 'checkpoints'}, starting fresh", file=sys.stderr)


def refuse_to_mix_runs(cfg: RootCfg, output_dir: Path) -> None:
    """A run that starts at step 0 in a folder holding another run's checkpoints would mix its events with
    them, and the top-k rotation (newest steps win) would delete its own checkpoints: stop before any work."""
    starts_fresh = cfg.mode == "train" and not (cfg.checkpointing.load is not None and cfg.checkpointing.resume)
    existing = sorted(Path(output_dir, "checkpoints").glob("*.ckpt")) if starts_fresh else []
    if existing:
        raise ConfigError("output_dir", str(output_dir),
                          f"a folder without an earlier run's checkpoints; it already holds checkpoints "
                          f"({', '.join(p.name for p in existing[:3])}): resume it with checkpointing.load="
                          f"{existing[-1]}, or start a new run in another output_dir=..., or delete that folder")


def open_output_folder(fabric: Fabric, cfg: RootCfg, output_dir: Path) -> None:
    """Rank 0 creates the folder and, for a training run (only the run that writes checkpoints there may delete
    half-written ones), removes what an earlier kill left of a checkpoint write."""
    if fabric.global_rank != 0:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    # Through logging, so that under Hydra the line also lands in output_dir/train.log.
    log.info(f"output directory: {output_dir}")
    if cfg.mode == "train":
        for stray in remove_stray_temporaries(output_dir / "checkpoints"):
            fabric.print(f"removed {stray} (a checkpoint write interrupted by an earlier kill)")


def write_config(fabric: Fabric, cfg: RootCfg, output_dir: Path, config_yaml: str | None, step: int) -> None:
    """Written only once the checkpoint (if any) has loaded, so a failed start changes nothing in output_dir.
    A resumed run keeps the earlier run's config.yaml and writes its own beside it; a test run into a
    training run's folder writes config_test.yaml."""
    if fabric.global_rank != 0 or config_yaml is None:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "test":
        name = "config_test.yaml"
    elif (output_dir / "config.yaml").exists() and step > 0:
        name = f"config_resumed_at_step_{step}.yaml"
    else:
        name = "config.yaml"
    (output_dir / name).write_text(config_yaml)
