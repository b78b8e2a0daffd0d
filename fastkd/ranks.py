"""Rank helpers for code that runs alike with and without an initialised ``torch.distributed`` group."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> Tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` averaged over the ranks (a new tensor); ``x`` itself outside a process group."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
