"""An epoch's training metrics, accumulated on the training device without host synchronisation.

Each step adds its loss terms (times the batch size), its top-1 hits and whether every term was finite,
as device operations only; :meth:`EpochMeters.read` copies them to the host in one transfer (the trainer
does so a few times per epoch, and before every checkpoint). Under torchrun :meth:`reduce` sums them over
ranks in one ``all_reduce``. The sums are float64, so a resumed epoch (:meth:`state_dict`) ends with the
uninterrupted run's exact numbers.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch


class EpochMeters:
    def __init__(self, device: torch.device):
        self.device = device
        self.names: List[str] = []
        self.sums: Optional[torch.Tensor] = None  # float64 (len(names),): sum of term x batch size
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self.seen = 0  # samples (a host number: batch sizes are shapes, known without a sync)
        self.seconds = 0.0  # training time spent in this epoch before a resume

    def add(self, terms: Dict[str, torch.Tensor], logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.sums is None:
            self.names = list(terms)
            self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        values = torch.stack([terms[k].detach().double() for k in self.names])
        n = len(labels)
        self.sums += values * n
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.finite &= torch.isfinite(values).all()
        self.seen += n

    def _packed(self) -> torch.Tensor:
        sums = self.sums if self.sums is not None else torch.zeros(0, dtype=torch.float64, device=self.device)
        extra = torch.stack([self.correct, torch.full_like(self.correct, self.seen), (~self.finite).double()])
        return torch.cat([sums, extra])

    def _unpack(self, values: List[float]) -> dict:
        *sums, correct, seen, bad = values
        seen_ = max(seen, 1.0)
        row = {f"train_{k}": v / seen_ for k, v in zip(self.names, sums)}
        return {**row, "train_top1": 100.0 * correct / seen_, "seen": int(seen), "finite": bad == 0}

    def read(self) -> dict:
        """Means over the samples so far (this rank), ``seen`` and ``finite``: one device-to-host copy."""
        return self._unpack(self._packed().tolist())

    def reduce(self) -> dict:
        """:meth:`read` summed over every rank (one all_reduce); the plain read without torchrun."""
        import torch.distributed as dist

        packed = self._packed()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)
        return self._unpack(packed.tolist())

    def state_dict(self) -> dict:
        return {"names": list(self.names), "sums": self.sums, "correct": self.correct, "finite": self.finite,
                "seen": self.seen, "seconds": self.seconds}

    def reduced_state_dict(self) -> dict:
        """:meth:`state_dict` summed over every rank (one all_reduce; every rank must call it): what a
        checkpoint holds, so that a resume counts each rank's part of the epoch once."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.state_dict()
        packed = self._packed()
        if self.device.type == "cpu" and dist.get_backend() == "nccl":
            packed = packed.cuda()
        dist.all_reduce(packed)
        packed = packed.cpu()
        n = len(self.names)
        return {"names": list(self.names), "sums": packed[:n].clone() if self.sums is not None else None,
                "correct": packed[n].clone(), "finite": packed[n + 2] == 0, "seen": int(packed[n + 1]),
                "seconds": self.seconds}

    def load_state_dict(self, state: dict, carry: bool = True) -> None:
        """Continue from ``state``; ``carry=False`` (ranks other than 0 after a resume): the same terms,
        counted from zero, since rank 0 carries the ranks' sums of the epoch so far."""
        self.names, self.seconds = list(state["names"]), float(state["seconds"])
        to = dict(device=self.device)
        if not carry:
            self.sums = torch.zeros(len(self.names), dtype=torch.float64, **to) if state["sums"] is not None else None
            return
        self.seen = int(state["seen"])
        self.sums = state["sums"].to(**to) if state["sums"] is not None else None
        self.correct, self.finite = state["correct"].to(**to), state["finite"].to(**to)
