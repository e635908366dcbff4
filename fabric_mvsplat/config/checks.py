"""Checks that need more than one key, the machine or the files the config names: run by `train.main` after
`load_config` and before any work (kept apart so that a config can be composed and inspected on a machine
without those files)."""

from pathlib import Path

import torch

from ..errors import ConfigError
from ..metrics.lpips import find_weight_files
from ..model.loss_config import check_losses
from .schema import LATEST_CHECKPOINT, RootCfg, scoring_lpips_weights


def check_before_work(cfg: RootCfg) -> None:
    """What would otherwise fail after output is written: cross-group combinations and the files the config
    names (ConfigError, or MissingWeightsError for LPIPS files)."""
    training = cfg.mode in ("train", "inspect")
    num_context_views = getattr(cfg.dataset.view_sampler, "num_context_views", None)
    if num_context_views is not None and num_context_views < 2:
        raise ConfigError("dataset.view_sampler.num_context_views", num_context_views,
                          "at least 2: the cost-volume encoder matches every context view against another")
    if cfg.model.decoder.backend == "gsplat" and (cfg.trainer.accelerator in ("cpu", "mps")
                                                  or not torch.cuda.is_available()):
        raise ConfigError("model.decoder.backend", "gsplat",
                          f"'auto' or 'torch' here: gsplat renders only on CUDA (trainer.accelerator="
                          f"{cfg.trainer.accelerator}, cuda available: {torch.cuda.is_available()}); "
                          "set model.decoder.backend=auto")
    view_sampler = cfg.dataset.view_sampler
    if view_sampler.name == "evaluation" and not Path(view_sampler.index_path).is_file():
        raise ConfigError("dataset.view_sampler.index_path", view_sampler.index_path,
                          "an existing evaluation index JSON (e.g. assets/evaluation_index_re10k.json, "
                          "relative to the directory you run from)")
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
    if cfg.mode == "test" and scoring_lpips_weights(cfg) is not None:
        find_weight_files(scoring_lpips_weights(cfg))
    elif cfg.test.lpips_weights is not None:
        find_weight_files(cfg.test.lpips_weights)
    name = cfg.wandb.get("name") if isinstance(cfg.wandb, dict) else None
    if cfg.mode == "test" and name is not None and (Path(str(name)).is_absolute() or ".." in Path(str(name)).parts):
        raise ConfigError("wandb.name", name, "a name for the folder under test.output_path (no absolute path, "
                          "no '..'): test mode writes into test.output_path/<wandb.name>")
    load = cfg.checkpointing.load
    if load is not None and load != LATEST_CHECKPOINT and not Path(load).is_file():
        raise ConfigError("checkpointing.load", load,
                          f"an existing checkpoint file, '{LATEST_CHECKPOINT}' (the newest in output_dir) "
                          "or null (start from scratch)")
