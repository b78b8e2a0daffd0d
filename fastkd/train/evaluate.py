"""Top-k accuracy over a loader (summed across ranks under torchrun)."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.distributed as dist
from torch import nn


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """How many rows have their label among the top k logits, for each k: a tensor on the logits' device
    (no host sync); k beyond the class count counts as the class count."""
    k_max = min(max(ks), logits.shape[1])
    hit = logits.topk(k_max, dim=1).indices.eq(labels.view(-1, 1)).cumsum(1).clamp_(max=1)
    return hit.sum(0)[[min(k, k_max) - 1 for k in ks]]


def evaluate(model: nn.Module, loader, epoch: int = 0) -> Dict[str, float]:
    """Top-1, top-5 (%), mean cross-entropy and count, summed on the device and read once at the end."""
    return evaluate_many([model], loader, epoch)[0]


@torch.no_grad()
def evaluate_many(models: Sequence[nn.Module], loader, epoch: int = 0) -> List[Dict[str, float]]:
    """:func:`evaluate` for each of ``models`` over one pass of ``loader`` (a one-pass row's cells): each batch
    decoded once, each model's numbers as it alone would get them; one all_reduce under torchrun."""
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    totals = [None] * len(models)  # per model: top1, top5, count, loss sum
    for batch in loader.epoch(epoch):
        for i, model in enumerate(models):
            logits = model(batch.images)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch.labels, reduction="sum")
            row = torch.cat([topk_hits(logits, batch.labels).double(),
                             logits.new_tensor([len(batch.labels)], dtype=torch.float64), loss.double().view(1)])
            totals[i] = row if totals[i] is None else totals[i] + row
    zero = torch.zeros(4, dtype=torch.float64, device=loader.device)
    summed = torch.stack([t if t is not None else zero for t in totals])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(summed)
    for m, was in zip(models, was_training):
        m.train(was)
    out = []
    for top1, top5, count, loss in summed.tolist():
        n = max(count, 1.0)
        out.append({"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "count": int(count)})
    return out
