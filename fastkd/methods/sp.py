"""``sp``: Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation" (arXiv:1907.09682);
reference code: mdistiller ``mdistiller/distillers/SP.py`` (``similarity_loss``, from RepDistiller's
``distiller_zoo/SP.py``, "verified by original author") and torchdistill ``SPKDLoss``
(``torchdistill/losses/mid_level.py``)."""
from __future__ import annotations

from typing import Collection, Iterable, Union

import torch
import torch.nn.functional as F

from . import register_method
from .adapters import COMMON_STAGES, is_auto, shared_taps, stage_names
from .base import Method
from .precision import widen


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    r"""The row-normalised N x N Gram matrix of a batch of maps (any shape, flattened per sample):
    :math:`\tilde G = \mathrm{normalize\_rows}(F F^\top)`, :math:`F` = N x (C H W) (paper, section 3)."""
    f = x.reshape(x.shape[0], -1)
    return F.normalize(f @ f.t(), dim=1)


def sp_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    r"""Similarity-preserving loss of one stage pair (paper, section 3; one layer pair):

    .. math::
        L_{SP} = \frac{1}{N^2} \left\lVert \tilde G_T - \tilde G_S \right\rVert_F^2,
        \qquad \tilde G = \mathrm{normalize\_rows}\big(F F^\top\big)

    with :math:`F` the N x (C H W) flattened maps and each row L2-normalised (``F.normalize``, eps 1e-12).
    The N x N matrices compare samples, not positions, so channel counts and spatial sizes may differ
    (no pooling, as in the reference). ``1/N^2`` is mdistiller's and torchdistill's ``batchmean``.
    Computed in the inputs' precision (float32 for half inputs); the teacher map is detached.
    """
    n = student_map.shape[0]
    g_s = similarity_matrix(widen(student_map))
    g_t = similarity_matrix(widen(teacher_map.detach()))
    return (g_t - g_s).pow(2).sum() / (n * n)


@register_method("sp", "spkd")
class SP(Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * :math:`\sum_j` ``sp_loss(student[j], teacher[j])``.

    ``stages``: ``auto`` (default) = the last stage tap both models have, once the trainer calls
    :meth:`select_taps` (``stage3`` before that); or an explicit list (the terms add up). The reference
    takes each network's last stage (mdistiller ``feats[-1]``, RepDistiller ``feat[-2]``, torchdistill's
    ImageNet ``layer4``); a student and a teacher of different depths (resnet32 and ResNet18) are paired
    at the last stage *both* have, since a tap name serves both networks here. ``weight`` 3000 (gamma of
    the paper's CIFAR experiments; mdistiller ``CFG.SP.LOSS.FEAT_WEIGHT``, RepDistiller ``-b 3000``),
    CE weight 1.
    """

    paper = "Tung & Mori 2019"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset(COMMON_STAGES[-1:])
    ce_weight = 1.0

    def __init__(self, weight: float = 3000.0, stages: Union[str, Iterable[str]] = "auto"):
        super().__init__()
        self.weight = float(weight)
        self.auto = is_auto(stages)
        self.stages = COMMON_STAGES[-1:] if self.auto else stage_names(stages, "sp.stages")
        self.needs = frozenset(self.stages)

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: the last stage tap both models have."""
        if self.auto:
            self.stages = shared_taps("sp", student_taps, teacher_taps)[-1:]
            self.needs = frozenset(self.stages)

    def forward(self, student, teacher, labels, index=None):
        return {"sp": self.weight * sum(sp_loss(student[j], teacher[j]) for j in self.stages)}

    def options(self):
        return {"weight": self.weight, "stages": list(self.stages)}
