"""The one collective that methods and the engine share, for statistics kept from batches."""

from __future__ import annotations

import torch


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the processes of a distributed run (``values`` itself in one process).

    Statistics a method keeps from its batches (path weights...) must be the same on every rank, or the ranks
    optimise different losses.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()
