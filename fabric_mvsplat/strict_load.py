"""The one strict weight loader: fine-tuning, test mode, resume, released encoder weights and the UniMatch init
all load through `load_weights_strict`, so every mismatch reads the same way and raises the same error."""

from typing import Mapping

from torch import Tensor, nn

from .errors import CheckpointError, UserError


FIX_SEPARATOR = "fix: "  # what follows it in the one-line message is the fix (a caller may put its own there)


def load_weights_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str,
                        fix: str = "check that model.encoder.* and the ablation flags (wo_*) match the config the "
                                   "weights were trained with (e.g. the same +experiment=...)",
                        ignore_missing: bool = False, error: type[UserError] = CheckpointError) -> None:
    """Load every weight of `module` from `state_dict`, or raise `error` (CheckpointError for checkpoints:
    fine-tuning, test mode, resume; WeightsError for the UniMatch init) listing the missing, unexpected and
    wrong-shaped keys; nothing is loaded when anything is wrong.

    ignore_missing: keys of `module` absent from the file keep their values (the UniMatch backbone without
    cross-attention has no pretrained FFN weights).
    """
    expected = module.state_dict()
    missing = [] if ignore_missing else [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [f"{key}: file {list(state_dict[key].shape)} vs model {list(expected[key].shape)}"
                   for key in expected if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                parts.append(f"{title} ({len(keys)}): {shown}")
        raise error(f"the weights in {source} do not fit the model built from the config: {'; '.join(parts)}; "
                    f"{FIX_SEPARATOR}{fix}")
    module.load_state_dict(dict(state_dict), strict=not ignore_missing)
