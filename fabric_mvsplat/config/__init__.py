"""The typed root config: `schema` (the dataclasses and their defaults), `loading` (Hydra's DictConfig ->
RootCfg, checked once at start-up), `checks` (cross-group combinations and the files the config names,
before any work) and `ignored_keys` (the original's keys that have no effect here)."""

from .checks import check_before_work
from .loading import CONFIG_DIR, from_dict, load_config
from .schema import (LATEST_CHECKPOINT, LPIPS_NOT_COMPUTED, CheckpointingCfg, DebugCfg, OptimizerCfg, ProfileCfg,
                     RootCfg, StallCfg, TestCfg, TrainCfg, TrainerCfg, WatchdogCfg, scoring_lpips_weights)

__all__ = ["CONFIG_DIR", "LATEST_CHECKPOINT", "LPIPS_NOT_COMPUTED", "CheckpointingCfg", "DebugCfg", "StallCfg",
           "WatchdogCfg", "OptimizerCfg", "ProfileCfg", "RootCfg", "TestCfg", "TrainCfg", "TrainerCfg",
           "check_before_work", "from_dict", "load_config", "scoring_lpips_weights"]
