"""torchrun support: process group from the environment, one device per rank, rank 0 writes,
elastic restarts resume (metrics are reduced over ranks by meters.EpochMeters)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastkd.errors import UserError
from fastkd.ranks import is_distributed


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu")
        if d.world > 1:
            torch.cuda.set_device(d.local_rank)
            return torch.device("cuda", d.local_rank)
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown --device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (read from the environment, so it holds before the process group exists),
    or a process outside torchrun: the one that writes files and prints results."""
    return int(os.environ.get("RANK", "0")) == 0


def elastic_restart() -> int:
    """How many times torchrun (``--max-restarts``) has restarted this job's workers; 0 outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
