"""The commands the project prints for a person to paste ("resume with:", "test it with:", a replay): safe in a
POSIX shell whatever the paths hold (spaces, quotes, `$(...)`), and read back by Hydra as the values printed.

Two layers of quoting: each value that is not a plain word is quoted for Hydra's override grammar (which would
otherwise read `a,b` as a sweep, `${x}` as an interpolation, or fail on `(`), and every word of the command is
quoted for the shell (shlex.join).
"""

import os
import re
import shlex

# Values Hydra's override parser reads back unchanged without quotes (paths, names, numbers, true/false).
HYDRA_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:+-]+")


def hydra_quote(value: str) -> str:
    """`value` as Hydra's override grammar reads it back literally: plain values as they are, anything else in
    single quotes, with quotes (and the backslashes before them) escaped and `${` kept from interpolating."""
    if HYDRA_PLAIN_VALUE.fullmatch(value):
        return value
    # A backslash is special to Hydra only in a run before a quote (or the closing quote): double those runs.
    escaped = re.sub(r"(\\*)(?='|$)", lambda run: run.group(1) * 2, value).replace("'", "\\'")
    return "'" + escaped.replace("${", "\\${") + "'"


def hydra_overrides() -> list[str]:
    """This run's command-line overrides as the shell passed them (already Hydra syntax); none outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):  # not started by Hydra (tests, notebooks)
        return []


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def launcher(world_size: int, num_nodes: int) -> list[str]:
    if world_size == 1 and "LOCAL_WORLD_SIZE" not in os.environ:
        return ["python", "-m"]
    local = os.environ.get("LOCAL_WORLD_SIZE", str(world_size // max(num_nodes, 1)))
    nodes = [f"--nnodes={num_nodes}"] if num_nodes > 1 else ["--standalone"]
    return ["torchrun", *nodes, f"--nproc_per_node={local}", "-m"]


def train_command(kept: list[str], settings: dict[str, str], world_size: int = 1, num_nodes: int = 1) -> str:
    """`python -m fabric_mvsplat.train` (or torchrun) with the overrides `kept` as given and `settings` added."""
    added = [f"{key}={hydra_quote(str(value))}" for key, value in settings.items()]
    return shlex.join([*launcher(world_size, num_nodes), "fabric_mvsplat.train", *kept, *added])
