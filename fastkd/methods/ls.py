"""``ls``: Sun, Ren, Li, Wang & Cao, CVPR 2024, "Logit Standardization in Knowledge Distillation" (arXiv:2403.01427).

Alias ``logit_std``. Reference code github.com/sunshangquan/logit-standardization-KD
(``mdistiller/distillers/KD.py`` with ``--logit-stand``) and torchdistill's ``LogitStdKDLoss``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register_method
from .base import Method


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Z-score of each row: :math:`\mathcal Z(z) = (z - \bar z) / (\epsilon + \sigma(z))` with the *unbiased*
    standard deviation over the classes (``torch.std``'s default, as the reference's ``normalize``)."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (eps + logits.std(dim=1, keepdim=True))


def ls_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               eps: float = 1e-7) -> torch.Tensor:
    r"""KD on standardised logits: T^2-scaled KL divergence, summed over classes and averaged over the batch.

    .. math::
        p = \mathrm{softmax}\big(\mathcal Z(z_t) / T\big),\quad q = \mathrm{softmax}\big(\mathcal Z(z_s) / T\big),
        \qquad L = \frac{T^2}{N} \sum_n \sum_c p_{n,c} \left(\log p_{n,c} - \log q_{n,c}\right)

    The paper writes the temperature as a base temperature times each logit vector's own standard deviation;
    dividing the z-score by the base temperature T is the same thing, and the reference keeps the usual T^2
    factor of KD (with T the base temperature). Computed in float32 for half-precision inputs and in float64
    for float64 inputs.
    """
    z_s = student_logits.to(torch.promote_types(student_logits.dtype, torch.float32))
    z_t = teacher_logits.detach().to(torch.promote_types(teacher_logits.dtype, torch.float32))
    log_q = F.log_softmax(standardize(z_s, eps) / temperature, dim=1)
    log_p = F.log_softmax(standardize(z_t, eps) / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean() * temperature**2


@register_method("ls", "logit_std")
class LogitStandardization(Method):
    """Total loss = ``ce_weight`` * CE + ``weight`` * ``ls_kd_loss``.

    Defaults are the reference's CIFAR-100 KD + logit standardisation (README: ``--logit-stand --base-temp 2
    --kd-weight 9``; ``tools/train.py`` sets ``KD.TEMPERATURE`` and ``KD.LOSS.KD_WEIGHT`` from them, and
    ``KD.LOSS.CE_WEIGHT`` stays at ``mdistiller/engine/cfg.py``'s 0.1): temperature 2, weight 9, CE weight
    0.1; the KD weight multiplies the T^2-scaled KL (``loss_kd = KD_WEIGHT * kd_loss``, the T^2 inside
    ``kd_loss``), as here. Its ImageNet run (``configs/imagenet/r34_r18/kd.yaml`` with the same flags) keeps
    temperature 2 and weight 9 with CE weight 1 (``--ce-weight 1``). ``eps`` = 1e-7 as the reference's.
    """

    paper = "Sun et al. 2024"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"logits"})
    ce_weight = 0.1

    def __init__(self, temperature: float = 2.0, weight: float = 9.0, eps: float = 1e-7):
        super().__init__()
        self.temperature, self.weight, self.eps = float(temperature), float(weight), float(eps)

    def forward(self, student, teacher, labels, index=None):
        return {"ls": self.weight * ls_kd_loss(student["logits"], teacher["logits"], self.temperature, self.eps)}

    def options(self):
        return {"temperature": self.temperature, "weight": self.weight, "eps": self.eps}
