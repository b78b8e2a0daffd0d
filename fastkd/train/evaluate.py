"""Top-k accuracy over a loader (summed across ranks under torchrun)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.distributed as dist
from torch import nn


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """How many rows have their label among the top k logits, for each k: a tensor on the logits' device
    (no host sync); k beyond the class count counts as the class count."""
    k_max = min(max(ks), logits.shape[1])
    hit = logits.topk(k_max, dim=1).indices.eq(labels.view(-1, 1)).cumsum(1).clamp_(max=1)
    return hit.sum(0)[[min(k, k_max) - 1 for k in ks]]


@torch.no_grad()
def evaluate(model: nn.Module, loader, epoch: int = 0) -> Dict[str, float]:
    """Top-1, top-5 (%), mean cross-entropy and count, summed on the device and read once at the end."""
    was_training = model.training
    model.eval()
    totals = None  # top1, top5, count, loss sum
    for batch in loader.epoch(epoch):
        logits = model(batch.images)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch.labels, reduction="sum")
        row = torch.cat([topk_hits(logits, batch.labels).double(), logits.new_tensor([len(batch.labels)], dtype=torch.float64), loss.double().view(1)])
        totals = row if totals is None else totals + row
    if totals is None:
        totals = torch.zeros(4, dtype=torch.float64, device=loader.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    model.train(was_training)
    top1, top5, count, loss = totals.tolist()
    n = max(count, 1.0)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "count": int(count)}
