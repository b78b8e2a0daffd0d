"""``nst``: Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"
(arXiv:1707.01219); reference code: mdistiller ``mdistiller/distillers/NST.py`` (``single_stage_nst_loss``,
``poly_kernel``; from RepDistiller's ``distiller_zoo/NST.py``)."""
from __future__ import annotations

from typing import Collection, Iterable, Union

import torch
import torch.nn.functional as F

from . import register_method
from .adapters import COMMON_STAGES, checked_maps, is_auto, match_spatial, shared_taps, stage_names
from .base import Method
from .precision import widen


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Mean over the batch and all channel pairs of the polynomial kernel :math:`k(x, y) = (x^\top y)^2`
    (d = 2, c = 0) between the rows of ``a`` (N x Ca x HW) and of ``b`` (N x Cb x HW)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    r"""Squared MMD with the polynomial kernel between the channels' normalised spatial responses.

    Each channel's H x W response is one sample of its network's distribution:
    :math:`f^k = F^{k\cdot} / \lVert F^{k\cdot} \rVert_2` (``F.normalize`` over positions, eps 1e-12), and

    .. math::
        L_{NST} = \frac{1}{N C_T^2} \sum_{n,i,i'} k(t^i, t^{i'}) + \frac{1}{N C_S^2} \sum_{n,j,j'} k(s^j, s^{j'})
                  - \frac{2}{N C_S C_T} \sum_{n,i,j} k(s^j, t^i), \qquad k(x, y) = (x^\top y)^2

    the biased MMD^2 of the paper (section 3) with its polynomial kernel (d = 2, c = 0), each term a
    mean over the batch and the channel pairs, as in the reference. Channel counts may differ. If the
    spatial sizes differ, the larger map is adaptive-average pooled to the smaller before the
    normalisation (the reference pools to the smaller height, square; per axis here). Computed in the
    inputs' precision (float32 for half inputs); the teacher map is detached.
    """
    fs, ft = match_spatial(widen(student_map), widen(teacher_map.detach()))
    fs, ft = F.normalize(fs.flatten(2), dim=2), F.normalize(ft.flatten(2), dim=2)
    return poly_kernel_mean(ft, ft) + poly_kernel_mean(fs, fs) - 2.0 * poly_kernel_mean(fs, ft)


@register_method("nst")
class NST(Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * :math:`\sum_j` ``nst_loss(student[j], teacher[j])``.

    ``stages``: ``auto`` (default) = every stage tap both models have, once the trainer calls
    :meth:`select_taps` (``stage1,stage2,stage3`` before that), the reference's ``feats[1:]`` (every stage
    output, mdistiller; RepDistiller ``feat[1:-1]``); or an explicit list. ``weight`` 50 on the sum over
    stages, multiplying the loss above as written (mdistiller ``CFG.NST.LOSS.FEAT_WEIGHT``, RepDistiller
    ``-b 50``), CE weight 1.
    """

    paper = "Huang & Wang 2017"
    peers = frozenset({"mdistiller"})

    needs = frozenset(COMMON_STAGES)
    ce_weight = 1.0

    def __init__(self, weight: float = 50.0, stages: Union[str, Iterable[str]] = "auto"):
        super().__init__()
        self.weight = float(weight)
        self.auto = is_auto(stages)
        self.stages = COMMON_STAGES if self.auto else stage_names(stages, "nst.stages")
        self.needs = frozenset(self.stages)

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: every stage tap both models have."""
        if self.auto:
            self.stages = shared_taps("nst", student_taps, teacher_taps)
            self.needs = frozenset(self.stages)

    def setup(self, student_signals, teacher_signals):
        for name in self.stages:
            checked_maps(student_signals, teacher_signals, name)

    def forward(self, student, teacher, labels, index=None):
        return {"nst": self.weight * sum(nst_loss(student[j], teacher[j]) for j in self.stages)}

    def options(self):
        return {"weight": self.weight, "stages": list(self.stages)}
