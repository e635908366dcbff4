"""The command line's Hydra overrides, checked before Hydra runs: its mistakes answered in one line.

Hydra answers a mistyped config group option, an unknown key or an override it cannot parse with a multi-line
message, exit code 1 and sometimes advice that makes things worse (`+trainer.max_step=10` adds a key nothing
reads). `check_overrides` composes the config as Hydra will and turns those failures into a `CommandLineError`
naming the override and the closest valid names; `train.main` prints it and exits 2 before any folder exists.
"""

import difflib
import re

from omegaconf import OmegaConf

from ..errors import CommandLineError


def check_overrides(config_dir: str, overrides: list[str]) -> None:
    """Compose `main` with `overrides` as `python -m fabric_mvsplat.train` will; CommandLineError on a mistake."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    with initialize_config_dir(config_dir=config_dir, version_base=None):
        try:
            compose("main", overrides=overrides, return_hydra_config=True)
        except MissingConfigException as error:
            raise missing_option(error, overrides) from None
        except OverrideParseException as error:
            raise unreadable_override(error, overrides, config_dir) from None
        except ConfigCompositionException as error:
            raise not_overridable(error, overrides, config_dir) from None
        except Exception:  # anything else (a resolver, a plugin): Hydra reports it in its own words
            return


def missing_option(error, overrides: list[str]) -> CommandLineError:
    """`+experiment=re10K`: the group exists, the option does not."""
    missing = str(getattr(error, "missing_cfg_file", "") or "")
    group, _, option = missing.rpartition("/")
    options = sorted(getattr(error, "options", None) or [])
    given = next((o for o in overrides if key_of(o) == group), f"{group}={option}")
    prefix = "+" if given.startswith("+") else ""
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.5) or close_case(option, options)
    hint = f"did you mean {' or '.join(f'{prefix}{group}={c}' for c in close)}? " if close else ""
    if not group or not options:
        return CommandLineError(f"{given}: there is no config '{missing}'; see docs/configuration.md")
    return CommandLineError(f"{given}: there is no config '{missing}'; {hint}(options in '{group}': "
                            f"{', '.join(options)})")


def not_overridable(error, overrides: list[str], config_dir: str) -> CommandLineError:
    """`trainer.max_step=10` (no such key), `experiment=re10k` (a group not in the defaults: needs +),
    `~trainer.foo` (nothing to delete)."""
    message = str(error)
    quoted = re.search(r"'([^']+)'", message)
    key = quoted.group(1) if quoted else ""
    given = next((o for o in overrides if key_of(o) == key), key)
    if "No match in the defaults list" in message:
        return CommandLineError(f"{given}: '{key}' is a config group that main.yaml does not select; "
                                f"add it with +{given.lstrip('+')}")
    close = closest(key, known_keys(config_dir, [o for o in overrides if o != given]))
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return CommandLineError(f"{given}: there is no config key '{key}'; {hint}"
                            "(every key with its default: docs/configuration.md)")


def unreadable_override(error, overrides: list[str], config_dir: str) -> CommandLineError:
    """`trainer.max_steps 10`, `trainer.max_steps==10`, `x=[1,2`: Hydra's grammar refused it."""
    quoted = re.search(r"override '([^']*)'", str(error))
    given = quoted.group(1) if quoted else next((o for o in overrides if not is_readable(o)), " ".join(overrides))
    key = key_of(given)
    known = known_keys(config_dir, [o for o in overrides if o != given and is_readable(o)])
    close = [key] if key in known else closest(key, known)
    hint = f"; did you mean {' or '.join(c + '=VALUE' for c in close)}?" if close else ""
    return CommandLineError(f"cannot read the override '{given}': write key=value with no spaces around '=' "
                            f"(e.g. trainer.max_steps=10), +group=option or ~key; lists as [a,b], values with "
                            f"spaces in quotes{hint}")


def closest(name: str, candidates: list[str]) -> list[str]:
    """The nearest names by difflib's ratio: the best, and any others nearly as close (same depth first)."""
    same_depth = [c for c in candidates if c.count(".") == name.count(".")]
    scored = sorted(((difflib.SequenceMatcher(None, name, c).ratio(), c) for c in same_depth or candidates),
                    reverse=True)
    scored = [(score, c) for score, c in scored if score >= 0.6]
    return [c for score, c in scored[:3] if score >= scored[0][0] - 0.05] if scored else []


def key_of(override: str) -> str:
    return re.split(r"[=\s]", override, maxsplit=1)[0].lstrip("+~")


def is_readable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
        return True
    except Exception:  # Hydra's grammar errors
        return False


def close_case(option: str, options: list[str]) -> list[str]:
    return [o for o in options if o.lower() == option.lower()]


def known_keys(config_dir: str, overrides: list[str]) -> list[str]:
    """Every dotted key of the config these overrides compose (nodes and leaves), or of main.yaml alone."""
    from hydra import compose

    try:
        cfg = compose("main", overrides=overrides)
    except Exception:  # another override is wrong too: main.yaml's keys still help
        cfg = compose("main")
    return list(dotted_keys(OmegaConf.to_container(cfg, resolve=False)))


def dotted_keys(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path
        if isinstance(value, dict):
            yield from dotted_keys(value, path)
