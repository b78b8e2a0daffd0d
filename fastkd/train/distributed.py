"""torchrun support: process group from the environment, one device per rank, rank 0 writes,
elastic restarts resume (metrics are reduced over ranks by meters.EpochMeters)."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable

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


TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "FASTKD_DIST_TIMEOUT", 1800.0


def timeout_seconds() -> float:
    """How long a rank waits for the others in one collective before it gives up: ``FASTKD_DIST_TIMEOUT``
    seconds, 30 minutes by default (long enough for a slow checkpoint write or evaluation on rank 0)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds > 0; set it to e.g. 1800 or unset it")
    return value


def init(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _collective_device() -> torch.device:
    """Where tensors of a collective must lie: the rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_same(values, what: str, d: Dist) -> None:
    """Stop every rank with one line unless all ranks hold the same integers ``values`` (e.g. the epoch and
    batch of the checkpoint each rank read)."""
    if d.world == 1:
        return
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_collective_device())
    low, high = t.clone(), t.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise UserError(f"the ranks read different {what} (from {low.tolist()} to {high.tolist()}); every rank "
                        "must see the same --out: put it on a filesystem all ranks share")


def broadcast_state(modules: Iterable, optimizer=None) -> None:
    """Rank 0's parameters, buffers (and optimiser state) on every rank, in place: after a resume every
    rank holds exactly what rank 0 loaded, whatever file the others read."""
    if not is_distributed():
        return
    tensors = [t for m in modules for t in m.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)]
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    device = _collective_device()
    with torch.no_grad():
        for t in tensors:
            data = t.data if t.device == device else t.data.to(device)
            dist.broadcast(data, src=0)
            if data is not t.data:
                t.data.copy_(data)


def lost_peer(exc: BaseException) -> bool:
    """Under torchrun: a collective failed because another rank died or stopped answering (gloo raises plain
    RuntimeErrors, so their text is read too)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(s in text for s in ("Timed out", "Connection closed", "Connection reset",
                                                                     "gloo", "NCCL"))


def lost_peer_message(exc: BaseException) -> str:
    """One line for a collective that failed because another rank died or stopped answering."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    return (f"rank {rank} lost contact with another rank of the torchrun job (a rank died or waited longer than "
            f"{TIMEOUT_ENV}={timeout_seconds():g} s: {first}); see the other ranks' errors above, then rerun "
            "with --resume")


def agree_exists(path: str, d: Dist) -> bool:
    """Whether ``path`` exists, agreed by every rank before any of them reads it: a rank that does not see
    what another sees (``--out`` on a filesystem the ranks do not share) stops the job with one line
    instead of training from scratch beside the others."""
    here = os.path.exists(path)
    if d.world == 1:
        return here
    seen = torch.zeros(d.world, dtype=torch.int64, device=_collective_device())
    seen[d.rank] = int(here)
    dist.all_reduce(seen)
    seen = seen.tolist()
    if all(seen) or not any(seen):
        return bool(seen[0])
    have = [r for r, s in enumerate(seen) if s]
    lack = [r for r, s in enumerate(seen) if not s]
    raise UserError(f"rank(s) {', '.join(map(str, have))} see {path} but rank(s) {', '.join(map(str, lack))} do not: "
                    "every rank must see the same --out; put it on a filesystem all ranks share (or remove the "
                    "stale checkpoint where it should not be)")


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
