"""Errors that name what is wrong and how to fix it.

Every mistake a user can make in the config or in the files it points at raises a `UserError`;
`train.main` catches it once, prints its one line and exits with code 2 (see docs/errors.md for every exit code). Anything else is a bug and
keeps its traceback. The subclasses also derive from the builtin a caller would expect
(ValueError, FileNotFoundError, ...), so `except ValueError` keeps working.
"""

import errno
from typing import Any


class UserError(Exception):
    """A mistake the user fixes in the config or the files: the message names the key or file, the value
    and the fix."""


class ConfigError(UserError, ValueError):
    """A config value is missing, unknown, of the wrong type or impossible.

    Raised with the key relative to the dataclass being built (e.g. ``max_steps``); the
    converter in :mod:`fabric_mvsplat.config` prefixes the full path (``trainer.max_steps``).
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config key '{key}' = {value!r} is not valid: expected {allowed}")

    def with_prefix(self, prefix: str) -> "ConfigError":
        key = f"{prefix}.{self.key}" if prefix else self.key
        return ConfigError(key, self.value, self.allowed)


class CommandLineError(UserError, ValueError):
    """An override Hydra cannot apply: a config group option or key that does not exist, or unreadable syntax."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, corrupt, refused by weights_only, does not fit the model, or cannot be
    written (disk full)."""


class DatasetError(UserError, FileNotFoundError):
    """A dataset root has no usable chunks, or its index points to missing files."""


class UnusableDataError(UserError, RuntimeError):
    """Every scene of a stage is rejected (corrupt, filtered, too few frames for the view sampler): names the
    filters and an example of each."""


class OverwriteRefused(UserError, FileExistsError):
    """Writing would replace or mix with data already in a folder (chunks, an index, other files)."""


class WeightsError(UserError, ValueError):
    """A pretrained-weights file (UniMatch backbone, LPIPS VGG and heads) is unreadable or does not fit."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A pretrained-weights file the config points at does not exist."""


class MissingFilesError(UserError, FileNotFoundError):
    """Several files or folders the run needs are missing: one line each, with its fix, so that one run lists
    everything to provide."""

    def __init__(self, problems: list[UserError]) -> None:
        self.problems = problems
        lines = [f"{len(problems)} files or folders this run needs are missing (provide all, then run again):"]
        lines += [f"  {i}. {problem}" for i, problem in enumerate(problems, 1)]
        super().__init__("\n".join(lines))


class InputError(UserError, ValueError):
    """An input of `fabric_mvsplat.render` / the inference API is unusable: too few images, an image without a
    camera, an unreadable or non-RGB image, a camera with NaN or a non-rotation, a checkpoint that does not fit
    its config, an output folder that already holds results."""


class OutputFolderError(UserError, OSError):
    """An output folder cannot be created or written, or another live run holds it."""

    def __init__(self, key: str, folder, problem: str) -> None:
        self.key, self.folder = key, folder
        super().__init__(f"{key}={folder} {problem}")

    def __str__(self) -> str:  # OSError would format its arguments as (errno, strerror)
        return self.args[0]


class DiskFullError(OSError):
    """No space left (or quota exceeded) while the run was writing: its own exit code, since work was done and
    what was written before is intact."""


class EmptyEvaluationError(RuntimeError):
    """Test mode rendered or scored no scene: averages over nothing must not pass for a result."""


def is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain (torch.save may report a failed write as a RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False
