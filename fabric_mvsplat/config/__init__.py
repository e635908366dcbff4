"""The typed root config: `schema` (the dataclasses), `load_config` (Hydra's DictConfig -> RootCfg, checked
once at start-up) and `check_before_work` (cross-group combinations and the files the config names)."""

from .schema import (LPIPS_NOT_COMPUTED, CheckpointingCfg, DebugCfg, OptimizerCfg, ProfileCfg, RootCfg, StallCfg,
                     TestCfg, TrainCfg, TrainerCfg, WatchdogCfg, check_before_work, from_dict, load_config,
                     scoring_lpips_weights)

__all__ = ["CheckpointingCfg", "DebugCfg", "StallCfg", "WatchdogCfg", "OptimizerCfg", "ProfileCfg", "RootCfg", "TestCfg", "TrainCfg", "TrainerCfg",
           "check_before_work", "from_dict", "load_config", "scoring_lpips_weights", "LPIPS_NOT_COMPUTED"]
