"""Top-k accuracy over a loader (summed across ranks under torchrun)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.distributed as dist
from torch import nn


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return {k: int(hit[:, : min(k, k_max)].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate(model: nn.Module, loader, epoch: int = 0) -> Dict[str, float]:
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # top1, top5, count, loss sum
    for batch in loader.epoch(epoch):
        logits = model(batch.images)
        hits = topk_correct(logits, batch.labels)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch.labels, reduction="sum")
        totals += torch.tensor([hits[1], hits[5], len(batch.labels), float(loss)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        t = totals.to(loader.device)
        dist.all_reduce(t)
        totals = t.cpu()
    model.train(was_training)
    n = max(float(totals[2]), 1.0)
    return {"top1": 100.0 * float(totals[0]) / n, "top5": 100.0 * float(totals[1]) / n,
            "loss": float(totals[3]) / n, "count": int(totals[2])}
