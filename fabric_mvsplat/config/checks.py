"""Checks that need more than one key, the machine or the files the config names: run by `train.main` after
`load_config` and before any work (kept apart so that a config can be composed and inspected on a machine
without those files)."""

from pathlib import Path

import torch

from ..errors import ConfigError
from ..data.view_sampler import read_evaluation_index
from ..metrics.lpips import find_weight_files
from ..model.decoder.rendering import resolve_backend
from ..model.loss_config import check_losses
from .schema import LATEST_CHECKPOINT, RootCfg, scoring_lpips_weights


def check_before_work(cfg: RootCfg) -> None:
    """What would otherwise fail after output is written: cross-group combinations and the files the config
    names (ConfigError, or MissingWeightsError for LPIPS files)."""
    training = cfg.mode in ("train", "inspect")
    resolve_backend(cfg.model.decoder.backend, run_device_type(cfg.trainer.accelerator))
    if cfg.dataset.view_sampler.name == "evaluation":
        read_evaluation_index(cfg.dataset.view_sampler)
    if training:
        check_losses(cfg.loss)
        if cfg.loss.depth is not None and cfg.train.depth_mode not in ("log", "log_clamped"):
            raise ConfigError("train.depth_mode", cfg.train.depth_mode,
                              "log (the original's) or log_clamped while the depth loss is enabled (it smooths the "
                              "rendered log depth), or no depth loss: add ~loss.depth")
        if cfg.loss.lpips is not None:
            find_weight_files(cfg.loss.lpips.weights)
        unimatch = cfg.model.encoder.unimatch_weights_path
        if cfg.checkpointing.load is None and unimatch is not None and not Path(unimatch).is_file():
            raise ConfigError("model.encoder.unimatch_weights_path", unimatch,
                              "an existing file (download gmdepth-scale1-resumeflowthings-scannet-5d9d7964.pth "
                              "from the UniMatch model zoo), or null to start the backbone from random init")
    scoring_weights = scoring_lpips_weights(cfg)  # the folder make_model loads LPIPS scores from, in any mode
    if scoring_weights is not None:
        find_weight_files(scoring_weights)
    load = cfg.checkpointing.load
    if load is not None and load != LATEST_CHECKPOINT and not Path(load).is_file():
        raise ConfigError("checkpointing.load", load,
                          f"an existing checkpoint file, '{LATEST_CHECKPOINT}' (the newest in output_dir) "
                          "or null (start from scratch)")


def run_device_type(accelerator: str) -> str:
    """The device type Fabric picks for trainer.accelerator on this machine."""
    if accelerator in ("cpu", "mps"):
        return accelerator
    return "cuda" if torch.cuda.is_available() else "cpu"
