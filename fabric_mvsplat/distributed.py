"""Small collectives the loop, checkpoints and evaluation share (one process: no-ops)."""

import torch
from lightning_fabric import Fabric


def gather_objects(fabric: Fabric, obj) -> list:
    """Every rank's `obj` on every rank (index = rank)."""
    if fabric.world_size == 1:
        return [obj]
    gathered = [None] * fabric.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered
