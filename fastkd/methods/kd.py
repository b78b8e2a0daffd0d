"""``kd``: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import register_method
from .base import Method
from .precision import widen


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""T^2-scaled KL divergence between the temperature-softened distributions, averaged over the batch.

    .. math::
        L_{KD} = \frac{T^2}{N} \sum_{n} \sum_{c} p^{T}_{n,c} \left(\log p^{T}_{n,c} - \log q^{T}_{n,c}\right),
        \quad p^T = \mathrm{softmax}(z_t / T),\; q^T = \mathrm{softmax}(z_s / T)

    (``F.kl_div(log q, p, reduction='batchmean') * T**2``). With the boolean row mask ``rows`` the mean runs over
    the kept rows only (none kept gives 0; an empty ``batchmean`` is NaN). Computed in the inputs' precision
    (float32 for half inputs); the teacher's logits are detached.
    """
    log_q = F.log_softmax(widen(student_logits) / temperature, dim=1)
    log_p = F.log_softmax(widen(teacher_logits.detach()) / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if rows is None:
        return kl.mean() * temperature**2
    return torch.where(rows, kl, torch.zeros_like(kl)).sum() / rows.sum().clamp_min(1) * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`soft_kl` in float32 (float64 logits too). The factor T^2 keeps the gradient magnitude of the soft
    term independent of T (paper, section 2)."""
    return soft_kl(student_logits.float(), teacher_logits.float(), temperature)


@register_method("kd")
class KD(Method):
    """Total loss = ``ce_weight`` * CE(student, labels) + ``weight`` * ``kd_loss``.

    Defaults T = 4, weight 0.9, CE weight 0.1: the paper's weighted average of soft and hard
    targets with the soft term dominant, at the values mdistiller and CRD use for CIFAR-100.
    """

    paper = "Hinton et al. 2015"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset({"logits"})
    ce_weight = 0.1

    def __init__(self, temperature: float = 4.0, weight: float = 0.9):
        super().__init__()
        self.temperature, self.weight = float(temperature), float(weight)

    def forward(self, student, teacher, labels, index=None):
        return {"kd": self.weight * kd_loss(student["logits"], teacher["logits"], self.temperature)}

    def options(self):
        return {"temperature": self.temperature, "weight": self.weight}
