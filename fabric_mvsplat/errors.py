"""Errors that name what is wrong and how to fix it."""

from typing import Any


class ConfigError(ValueError):
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


class EmptyEvaluationError(RuntimeError):
    """Test mode rendered or scored no scene: averages over nothing must not pass for a result."""
