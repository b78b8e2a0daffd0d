"""``dkd``: Zhao, Cui, Song, Qiu & Liang, CVPR 2022, "Decoupled Knowledge Distillation" (arXiv:2203.08679)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from fastkd.errors import UserError

from . import register_method
from .base import Method


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""The two parts of the decoupled KD loss, ``(TCKD, NCKD)``, each T^2-scaled and batch-averaged.

    .. math::
        b = \left[p_{gt},\; 1 - p_{gt}\right],\quad p = \mathrm{softmax}(z / T),\qquad
        \mathrm{TCKD} = T^2\, \frac1N \sum_n \mathrm{KL}(b^t_n \,\Vert\, b^s_n)

        \hat p_c = \frac{\exp(z_c / T)}{\sum_{k \ne gt} \exp(z_k / T)}\ (c \ne gt),\qquad
        \mathrm{NCKD} = T^2\, \frac1N \sum_n \mathrm{KL}(\hat p^t_n \,\Vert\, \hat p^s_n)

    (paper eqs. 1-4; KD = TCKD + (1 - p^t_{gt}) NCKD, DKD = alpha TCKD + beta NCKD). The binary and
    non-target log-probabilities are computed with log-sum-exp over the non-target logits, without the
    ``-1000 * mask`` trick of the reference code.
    """
    n, c = student_logits.shape
    gt = F.one_hot(labels.long(), c).bool()

    def parts(z):
        z = z.float() / temperature
        log_all = torch.logsumexp(z, dim=1)
        others = z[~gt].view(n, c - 1)
        log_others = torch.logsumexp(others, dim=1)
        log_b = torch.stack([z[gt] - log_all, log_others - log_all], dim=1)    # log [p_gt, 1 - p_gt]
        return log_b, others - log_others.unsqueeze(1)                         # log p_hat

    log_bs, log_hs = parts(student_logits)
    log_bt, log_ht = parts(teacher_logits.detach())
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(dim=1).mean()
    nckd = (log_ht.exp() * (log_ht - log_hs)).sum(dim=1).mean()
    return tckd * temperature**2, nckd * temperature**2


class LinearWarmup:
    """Mixin of a loss weight that ramps up linearly over the first ``self.warmup`` epochs:
    ``w = min((epoch + 1) / warmup, 1)`` for the 0-based epoch given to :meth:`set_epoch` (the references'
    1-based ``epoch / warmup``); 1 before any :meth:`set_epoch` call and with ``warmup=0``."""

    _epoch: Optional[int] = None

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch."""
        self._epoch = int(epoch)

    def warmup_factor(self) -> float:
        if self._epoch is None or self.warmup == 0:
            return 1.0
        return min((self._epoch + 1) / self.warmup, 1.0)


@register_method("dkd")
class DKD(LinearWarmup, Method):
    """Total loss = ``ce_weight`` * CE + w(epoch) * (``alpha`` TCKD + ``beta`` NCKD), terms ``dkd.tckd``
    and ``dkd.nckd``.

    Paper CIFAR-100 defaults: alpha = 1, beta = 8, T = 4, CE weight 1, and the KD weight w ramps up
    linearly over the first ``warmup`` = 20 epochs (:class:`LinearWarmup`: 1/20 in the first epoch, as in the
    reference code's 1-based ``epoch / 20``). Before any :meth:`set_epoch` call w = 1; ``warmup=0`` disables
    the ramp.
    """

    paper = "Zhao et al. 2022"
    peers = frozenset({"mdistiller"})

    needs = frozenset({"logits"})
    ce_weight = 1.0

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20):
        super().__init__()
        if int(warmup) < 0:
            raise UserError(f"dkd.warmup must be >= 0 epochs, got {warmup}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup = int(warmup)

    def forward(self, student, teacher, labels, index=None):
        tckd, nckd = dkd_loss(student["logits"], teacher["logits"], labels, self.temperature)
        w = self.warmup_factor()
        return {"dkd.tckd": w * self.alpha * tckd, "dkd.nckd": w * self.beta * nckd}

    def options(self):
        return {"alpha": self.alpha, "beta": self.beta, "temperature": self.temperature, "warmup": self.warmup}
