"""Loading released / Lightning / our own encoder weights, and the UniMatch backbone init."""

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ... import safe_load
from ...errors import MissingWeightsError, WeightsError

UNIMATCH_KEY = "model.encoder.unimatch_weights_path"


def describe_mismatch(module: nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Human-readable lines for missing, unexpected and wrong-shaped keys (empty when they match)."""
    expected = module.state_dict()
    lines = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing:
        lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if wrong:
        lines.append(f"wrong-shaped keys ({len(wrong)}): " + ", ".join(
            f"{k} file {list(state_dict[k].shape)} vs model {list(expected[k].shape)}" for k in wrong))
    return lines


def load_encoder_weights(encoder: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Strictly load encoder weights.

    Accepts the encoder's own keys, or the Lightning layout (`ckpt["state_dict"]`) whose encoder
    keys start with `encoder.`; in that layout, keys outside `encoder.` are ignored.
    """
    if any(k.startswith("encoder.") for k in state_dict):
        state_dict = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    problems = describe_mismatch(encoder, state_dict)
    if problems:
        raise ValueError(
            f"encoder weights in {source} do not match the encoder built from the config "
            "(check model.encoder.* against the checkpoint's experiment, e.g. +experiment=re10k, "
            "and the ablation flags wo_*):\n  " + "\n  ".join(problems)
        )
    encoder.load_state_dict(dict(state_dict), strict=True)


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
    problems = describe_mismatch(backbone, weights)
    if not strict:  # without cross-attention the FFN keys are legitimately missing
        problems = [p for p in problems if not p.startswith("missing")]
    if problems:
        raise WeightsError(f"UniMatch weights in {path} ({UNIMATCH_KEY}) do not fit the backbone:\n  " + "\n  ".join(problems))
    backbone.load_state_dict(weights, strict=strict)
