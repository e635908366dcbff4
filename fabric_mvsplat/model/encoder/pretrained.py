"""Loading released / Lightning / our own encoder weights, and the UniMatch backbone init."""

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ... import safe_load
from ...errors import MissingWeightsError, WeightsError
from ...strict_load import load_weights_strict

UNIMATCH_KEY = "model.encoder.unimatch_weights_path"


def load_encoder_weights(encoder: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Strictly load encoder weights.

    Accepts the encoder's own keys, or the Lightning layout (`ckpt["state_dict"]`) whose encoder
    keys start with `encoder.`; in that layout, keys outside `encoder.` are ignored.
    """
    if any(k.startswith("encoder.") for k in state_dict):
        state_dict = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    load_weights_strict(encoder, state_dict, source)


def load_unimatch_backbone(encoder: nn.Module, path: str) -> None:
    """Initialise `encoder.backbone` from a UniMatch checkpoint (a dict whose "model" holds its weights).

    Only the keys the backbone has are used (the CNN `backbone.*` and `transformer.*`); the load is
    strict unless the backbone has no cross-attention (its FFN then has no pretrained weights).
    """
    file = Path(path)
    if not file.is_file():
        raise MissingWeightsError(
            f"UniMatch backbone weights not found at '{path}' ({UNIMATCH_KEY}). Download "
            "gmdepth-scale1-resumeflowthings-scannet-5d9d7964.pth from the UniMatch model zoo into "
            f"checkpoints/, point {UNIMATCH_KEY} at it, or set {UNIMATCH_KEY}=null to start the "
            "backbone from random init."
        )
    try:
        checkpoint = safe_load.load(file, f"UniMatch weights ({UNIMATCH_KEY})")
    except safe_load.FileLoadError as error:
        raise WeightsError(str(error)) from error
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise WeightsError(f"{path} ({UNIMATCH_KEY}) is not a UniMatch checkpoint: expected a dict with a 'model' entry")
    backbone = encoder.backbone
    wanted = backbone.state_dict()
    weights = {k: v for k, v in checkpoint["model"].items() if k in wanted}
    strict = not encoder.cfg.wo_backbone_cross_attn
    # Without cross-attention the FFN keys are legitimately missing.
    load_weights_strict(backbone, weights, f"{path} ({UNIMATCH_KEY})", ignore_missing=not strict, error=WeightsError,
                        fix=f"point {UNIMATCH_KEY} at the UniMatch gmdepth-scale1 file, or set it to null")
