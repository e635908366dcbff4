"""Keys the original accepts that change nothing here: a warning when one is set away from the value main.yaml
ships, so that a command line copied from the original neither fails nor silently means something else."""

import dataclasses
import warnings

from ..model.encoder.config import VisualizerCfg
from .schema import RootCfg

# Keys the original accepts that change nothing here: (the values main.yaml ships, why they have no effect).
KEYS_WITHOUT_EFFECT = {
    "data_loader.train.persistent_workers": ((True,), "the train stream keeps its workers for the whole run"),
    "data_loader.val.persistent_workers": ((True,), "validation reads its scenes in the training process"),
    "data_loader.val.num_workers": ((0, 1), "validation reads its scenes in the training process"),
    "data_loader.test.persistent_workers": ((False,), "the test loader makes one pass"),
    "train.extended_visualization": ((False,), "the original's extended visualisation is not implemented"),
    "checkpointing.pretrained_model": ((None,), "unused in the original too; fine-tune with "
                                                "checkpointing.load=PATH checkpointing.resume=false"),
    "model.encoder.visualizer": ((dataclasses.asdict(VisualizerCfg()),), "the original's encoder visualiser "
                                                                         "is disabled there too"),
}


def warn_about_keys_without_effect(cfg: RootCfg) -> None:
    """One warning per key that is set away from its default but does nothing."""
    for key, (defaults, reason) in KEYS_WITHOUT_EFFECT.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if value not in defaults:
            warnings.warn(f"config key '{key}' = {value!r} has no effect: {reason}", UserWarning, stacklevel=2)
