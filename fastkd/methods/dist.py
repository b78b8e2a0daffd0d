"""``dist``: Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher" (arXiv:2205.10536).

Authors Huang, You, Wang, Qian & Xu; reference code github.com/hunto/DIST_KD (its loss in the classification
submodule, github.com/hunto/image_classification_sota, ``lib/models/losses/dist_kd.py``) and torchdistill's
``DISTLoss``."""
from __future__ import annotations

from typing import Tuple

import torch

from fastkd.errors import UserError

from . import register_method
from .base import Method


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Pearson correlation of each row of ``a`` with the same row of ``b`` (the reference's form: the
    cosine of the centred rows, ``eps`` added to the product of the norms, not a clamp of each norm)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              eps: float = 1e-8) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""The two DIST relations ``(inter, intra)``, each scaled by :math:`\tau^2` as in the reference code.

    .. math::
        Y^s = \mathrm{softmax}(Z^s / \tau),\; Y^t = \mathrm{softmax}(Z^t / \tau)\quad (N \times C,
        \text{softmax over classes}),\qquad
        \rho(u, v) = \frac{(u - \bar u) \cdot (v - \bar v)}{\lVert u - \bar u\rVert \lVert v - \bar v\rVert + \epsilon}

        L_{inter} = \tau^2 \Big(1 - \frac1N \sum_{n} \rho\big(Y^s_{n,:}, Y^t_{n,:}\big)\Big),\qquad
        L_{intra} = \tau^2 \Big(1 - \frac1C \sum_{c} \rho\big(Y^s_{:,c}, Y^t_{:,c}\big)\Big)

    (the paper's inter-class relation = per-sample correlation across classes; its intra-class relation =
    per-class correlation across the batch). The intra term depends on the whole batch (per rank under DDP,
    as in the reference); a batch of one gives ``L_intra = tau^2`` with zero gradient. Computed in float32
    for half-precision inputs and in float64 for float64 inputs.
    """
    z_s = student_logits.to(torch.promote_types(student_logits.dtype, torch.float32))
    z_t = teacher_logits.detach().to(torch.promote_types(teacher_logits.dtype, torch.float32))
    y_s, y_t = torch.softmax(z_s / temperature, dim=1), torch.softmax(z_t / temperature, dim=1)
    inter = 1 - pearson_rows(y_s, y_t, eps).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t(), eps).mean()
    return inter * temperature**2, intra * temperature**2


@register_method("dist")
class DIST(Method):
    """Total loss = ``ce_weight`` * CE + ``weight`` * (``beta`` L_inter + ``gamma`` L_intra); terms
    ``dist.inter`` and ``dist.intra``.

    Defaults are the reference's CIFAR-100 recipe (``configs/strategies/distill/dist_cifar.yaml``:
    ``kd: dist_t4``, ``kd_loss_weight: 2``, ``ori_loss_weight: 1``; ``lib/models/losses/kd_loss.py`` builds
    ``DIST(beta=1, gamma=1, tau=4)`` for ``dist_t4``): beta = gamma = 1, temperature 4, weight 2, CE weight 1
    (the paper's beta = gamma = 2 as weight 2 x 1). Its ImageNet recipe (``resnet_dist.yaml``, ``kd: dist``)
    is temperature 1 with the same weights: ``--opt dist.temperature=1``. torchdistill's ``DISTLoss`` has the
    same formula with tau = 1 by default. ``eps`` = 1e-8 as in the reference's ``cosine_similarity``.
    """

    paper = "Huang et al. 2022"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"logits"})
    ce_weight = 1.0

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 4.0, weight: float = 2.0,
                 eps: float = 1e-8):
        super().__init__()
        if not float(gamma) >= 0:
            raise UserError(f"--opt dist.gamma={gamma!r} is a loss weight; give a value >= 0")
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)
        self.weight, self.eps = float(weight), float(eps)

    def forward(self, student, teacher, labels, index=None):
        inter, intra = dist_loss(student["logits"], teacher["logits"], self.temperature, self.eps)
        return {"dist.inter": self.weight * self.beta * inter, "dist.intra": self.weight * self.gamma * intra}

    def options(self):
        return {"beta": self.beta, "gamma": self.gamma, "temperature": self.temperature, "weight": self.weight,
                "eps": self.eps}
