"""``at``: Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer" (arXiv:1612.03928)."""
from __future__ import annotations

from typing import Iterable, Union

import torch
import torch.nn.functional as F

from . import register_method
from .adapters import COMMON_STAGES, checked_maps, match_spatial, stage_names
from .base import Method


def attention_map(a: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""Un-normalised spatial attention :math:`\frac1C \sum_c |A_c|^p` of an N x C x H x W map: N x H x W."""
    return a.float().abs().pow(p).mean(dim=1)


def at_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""Squared distance of the L2-normalised attention vectors of one stage pair.

    .. math::
        Q = \mathrm{vec}\Big(\tfrac1C \textstyle\sum_c |A_c|^p\Big),\qquad
        L_{AT} = \frac{1}{N\,HW} \sum_{n} \left\lVert \frac{Q^s_n}{\lVert Q^s_n\rVert_2}
                 - \frac{Q^t_n}{\lVert Q^t_n\rVert_2} \right\rVert_2^2

    Channel counts may differ (the map sums over channels). If the spatial sizes differ, the larger
    *feature map* is adaptive-average pooled to the smaller H x W before the power, as in the
    authors', RepDistiller's and mdistiller's code (pooling the attention map after the power would
    give a different, larger value). The mean over the N * H*W elements is the paper's "beta divided by
    the number of elements in the attention map and the batch size" (section 4.1).
    """
    fs, ft = match_spatial(student_map.float(), teacher_map.detach().float())
    qs, qt = F.normalize(attention_map(fs, p).flatten(1), dim=1), F.normalize(attention_map(ft, p).flatten(1), dim=1)
    return (qs - qt).pow(2).mean()


@register_method("at")
class AT(Method):
    r"""Total loss = ``ce_weight`` * CE + :math:`\beta \sum_j` ``at_loss(student[j], teacher[j])``.

    ``stages``: the stage taps paired (stage j of the student with stage j of the teacher); default
    ``stage1,stage2,stage3``, every stage of the 3-stage families and the three that all families have
    (add ``stage4`` for two 4-stage models: ``--opt at.stages=stage1,stage2,stage3,stage4``; the paper
    uses the last two groups on ImageNet). beta = 1000 on the *sum* over stages, p = 2, CE weight 1:
    the effective weight of RepDistiller (``-b 1000``) and mdistiller (``FEAT_WEIGHT 1000``). The
    paper's eq. 2 writes beta/2, which halves it; the reference code does not, and neither do we.
    """

    paper = "Zagoruyko & Komodakis 2017"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset(COMMON_STAGES)
    ce_weight = 1.0

    def __init__(self, beta: float = 1000.0, p: float = 2.0,
                 stages: Union[str, Iterable[str]] = COMMON_STAGES):
        super().__init__()
        self.beta, self.p = float(beta), float(p)
        self.stages = stage_names(stages, "at.stages")
        self.needs = frozenset(self.stages)

    def setup(self, student_signals, teacher_signals):
        for name in self.stages:
            checked_maps(student_signals, teacher_signals, name)

    def forward(self, student, teacher, labels, index=None):
        total = sum(at_loss(student[j], teacher[j], self.p) for j in self.stages)
        return {"at": self.beta * total}

    def options(self):
        return {"beta": self.beta, "p": self.p, "stages": list(self.stages)}
