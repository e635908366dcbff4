"""Small helpers every rank calls the same way: gathering Python objects, and whether to draw a bar.

Both the training loop and the test mode use them; keeping them here means evaluation never imports
the loop.
"""

import os
import sys

import torch
from lightning_fabric import Fabric


def gather_objects(fabric: Fabric, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (a collective: all ranks must call it)."""
    if fabric.world_size == 1:
        return [obj]
    gathered = [None] * fabric.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def show_progress_bar() -> bool:
    """A bar only for a person at a terminal; CI logs and files get the console lines alone."""
    return sys.stderr.isatty() and not os.environ.get("CI")
