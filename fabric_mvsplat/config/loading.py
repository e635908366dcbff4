"""Hydra's composed DictConfig -> the typed RootCfg, once at start-up, before any work.

An unknown key, a value of the wrong type or an impossible value raises `ConfigError` naming the full key path
(`trainer.max_steps`), the value and what is allowed. The converter is deliberately small: it understands int,
float (accepts int), bool, str, None/Optional, Literal, list[T], dict, nested dataclasses, and unions (unions of
dataclasses are chosen by their `name` field, other unions by the first member that accepts the value).
"""

import dataclasses
import difflib
import time
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .ignored_keys import warn_about_keys_without_effect
from .schema import RootCfg

# The Hydra configs ship inside the package, so a plain `pip install .` finds them from any directory.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def load_config(dict_config: DictConfig | dict) -> RootCfg:
    """Hydra's composed config -> RootCfg, or ConfigError naming the full key path.

    `train.main` then calls `check_before_work`, which checks what would otherwise fail late: keys that
    depend on each other across groups and the files the config points at (kept apart so that a config
    can be composed and inspected on a machine without those files).
    """
    if isinstance(dict_config, DictConfig):
        dict_config = OmegaConf.to_container(dict_config, resolve=True)
    cfg = from_dict(RootCfg, dict_config)
    if cfg.output_dir is None:  # the original's output_dir: null, i.e. Hydra's time-stamped folder (main.yaml's)
        cfg.output_dir = time.strftime("outputs/%Y-%m-%d/%H-%M-%S")
    warn_about_keys_without_effect(cfg)
    return cfg


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from plain `data`, checking every key and type on the way."""
    if not isinstance(data, dict):
        raise ConfigError(path or "<root>", data, f"a mapping of {cls.__name__} keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in fields]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f"did you mean '{_join(path, close[0])}'? " if close else ""
        raise ConfigError(_join(path, str(unknown[0])), data[unknown[0]],
                          f"a known key ({hint}the keys here: {sorted(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(path, name), "<missing>", f"a value of type {_describe(hints[name])}")
    try:
        return cls(**kwargs)
    except ConfigError as error:  # raised by __post_init__ with a key relative to `cls`
        raise error.with_prefix(path) from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(path, value, "null")
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, path)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != isinstance(args[0], bool):
            raise ConfigError(path, value, "one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, _describe(tp))
        item = args[0] if args else Any
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "a string")
        return value
    raise TypeError(f"fabric_mvsplat.config cannot convert type {tp!r} (key '{path}')")


def _convert_union(members: tuple, value: Any, path: str) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise ConfigError(path, value, _describe(Union[members]))
    members = tuple(m for m in members if m is not type(None))
    if len(members) == 1:
        return _convert(members[0], value, path)
    if all(dataclasses.is_dataclass(m) for m in members):
        by_name = {typing.get_args(typing.get_type_hints(m)["name"])[0]: m for m in members}
        name = value.get("name") if isinstance(value, dict) else None
        if name not in by_name:
            raise ConfigError(_join(path, "name"), name, "one of " + ", ".join(repr(n) for n in by_name))
        return from_dict(by_name[name], value, path)
    for member in members:
        try:
            return _convert(member, value, path)
        except ConfigError:
            continue
    raise ConfigError(path, value, _describe(Union[members]))


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    return getattr(tp, "__name__", str(tp))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
