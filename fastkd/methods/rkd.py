"""``rkd``: Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge Distillation" (arXiv:1904.05068)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from . import register_method
from .base import Method


def _differences(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``d[i, j] = x_j - x_i`` (N x N x D) and the distances ``||x_j - x_i||`` (N x N, 0 on the diagonal)."""
    d = x.unsqueeze(0) - x.unsqueeze(1)
    return d, d.norm(dim=2)


def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Distance-wise RKD (paper eqs. 4-5): Huber loss between mean-normalised pairwise distances.

    .. math::
        \psi_D(x_i, x_j) = \frac{\lVert x_i - x_j \rVert_2}{\mu},\quad
        \mu = \frac{1}{N(N-1)} \sum_{i \ne j} \lVert x_i - x_j \rVert_2, \qquad
        L_D = \frac{1}{N^2} \sum_{i, j} \ell_\delta\!\left(\psi_D(t_i, t_j), \psi_D(s_i, s_j)\right)

    :math:`\ell_\delta` = Huber with :math:`\delta = 1` (``smooth_l1``); :math:`\mu` is computed per
    network on the batch. Averaged over all :math:`N^2` ordered pairs as in the authors' code (the
    diagonal is 0 in both and contributes nothing).
    """
    def psi(x):
        n = x.shape[0]
        dist = _differences(x.flatten(1))[1]
        mu = dist.sum() / max(n * (n - 1), 1)
        return dist / mu.clamp_min(eps)

    return F.smooth_l1_loss(psi(student_emb.float()), psi(teacher_emb.detach().float()), beta=1.0)


def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    r"""Angle-wise RKD (paper eqs. 6-7): Huber loss between the cosines of the triplet angles.

    .. math::
        \psi_A(x_i, x_j, x_k) = \cos\angle x_i x_j x_k = \langle e^{ij}, e^{kj} \rangle,\quad
        e^{ij} = \frac{x_i - x_j}{\lVert x_i - x_j \rVert_2}, \qquad
        L_A = \frac{1}{N^3} \sum_{i,j,k} \ell_\delta\!\left(\psi_A(t_i,t_j,t_k), \psi_A(s_i,s_j,s_k)\right)

    Averaged over all :math:`N^3` triples as in the authors' code. The unit vector of a zero
    difference (``i = j``, or two samples with identical embeddings) is 0 *with zero gradient*, so such
    triples contribute a cosine of 0. The reference code divides by a clamped norm (``F.normalize``,
    eps 1e-12) instead: same value, but two identical student embeddings get gradients of ~1e12.
    Memory: N x N x D.
    """
    def psi(x):
        d, dist = _differences(x.flatten(1))
        nonzero = dist > 0
        safe = torch.where(nonzero, dist, torch.ones_like(dist)).unsqueeze(2)
        e = torch.where(nonzero.unsqueeze(2), d / safe, torch.zeros_like(d))  # e[j, i]: unit x_j -> x_i
        return torch.bmm(e, e.transpose(1, 2))     # [j, i, k] = <e^{ij}, e^{kj}>

    return F.smooth_l1_loss(psi(student_emb.float()), psi(teacher_emb.detach().float()), beta=1.0)


@register_method("rkd")
class RKD(Method):
    """Total loss = ``ce_weight`` * CE + ``distance_weight`` * L_D + ``angle_weight`` * L_A on ``embedding``.

    Terms ``rkd.distance`` and ``rkd.angle``. Weights 25 and 50 (paper, section 4: lambda_D = 25,
    lambda_A = 50 for RKD-DA), CE weight 1 (mdistiller's CIFAR-100 setting).
    """

    paper = "Park et al. 2019"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset({"embedding"})
    ce_weight = 1.0

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def forward(self, student, teacher, labels, index=None):
        s, t = student["embedding"], teacher["embedding"]
        terms = {}
        if self.distance_weight:
            terms["rkd.distance"] = self.distance_weight * rkd_distance_loss(s, t)
        if self.angle_weight:
            terms["rkd.angle"] = self.angle_weight * rkd_angle_loss(s, t)
        return terms

    def options(self):
        return {"distance_weight": self.distance_weight, "angle_weight": self.angle_weight}
