"""``l2``: logit regression (mimic learning), Ba & Caruana 2014, "Do Deep Nets Really Need to be
Deep?" (arXiv:1312.6184); as a KD loss: Kim et al. 2021, "Comparing Kullback-Leibler Divergence and
Mean Squared Error Loss in Knowledge Distillation" (arXiv:2105.08919)."""
from __future__ import annotations

import torch

from . import register_method
from .base import Method


def l2_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    r"""Mean squared error between the raw (pre-softmax) logits, averaged over batch *and* classes.

    .. math::
        L_{L2} = \frac{1}{N C} \sum_{n=1}^{N} \sum_{c=1}^{C} \left(z^s_{n,c} - z^t_{n,c}\right)^2

    This is ``torch.nn.MSELoss()`` (reduction ``mean``), the normalisation of Kim et al. 2021.
    Ba & Caruana write :math:`\frac{1}{2N}\sum_n \lVert z^s_n - z^t_n \rVert^2` (sum over classes,
    halved), i.e. :math:`C/2` times this value; only the effective learning rate differs.
    """
    diff = student_logits.float() - teacher_logits.detach().float()
    return diff.pow(2).mean()


@register_method("l2")
class L2(Method):
    """Total loss = ``ce_weight`` * CE + ``weight`` * ``l2_loss``.

    Defaults: weight 1, CE weight 0. Ba & Caruana train the student on the logit regression alone,
    and Kim et al. 2021 find the pure MSE objective (their alpha = 1, no hard-label term) the best
    setting; ``--ce-weight`` adds the hard labels back.
    """

    paper = "Ba & Caruana 2014"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"logits"})
    ce_weight = 0.0

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(self, student, teacher, labels, index=None):
        return {"l2": self.weight * l2_loss(student["logits"], teacher["logits"])}

    def options(self):
        return {"weight": self.weight}
