"""``rkd``: Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge Distillation" (arXiv:1904.05068)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from . import register_method
from .base import Method


# Two embeddings whose squared distance is under this fraction of their (centred) squared norms, i.e. a relative
# distance under 1e-6, count as one point: distance 0 and no direction for the angles. The float64 rounding of
# the Gram form (~1e-15 of the norms) lies far below it.
SAME_POINT = 1e-12


def _relations(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's centred Gram matrix ``g`` (float64), the pairwise distances ``||x_i - x_j||`` (N x N, 0 on the
    diagonal and between coinciding embeddings) and their inverses (0 where the distance is 0).

    Everything comes from the N x N Gram matrix: ``||x_i - x_j||^2 = g_ii + g_jj - 2 g_ij``. The reference code
    forms the N x N x D differences instead, N^2 D memory and an N^3 D product for the angles. In float64 and
    centred on the batch mean, the Gram form loses nothing to cancellation at float32's precision (tested against
    the direct differences in float64); a zero distance gets a zero gradient (not the infinite one of sqrt at 0).
    """
    x = x.flatten(1).double()
    x = x - x.mean(dim=0, keepdim=True)
    g = x @ x.t()
    sq = g.diagonal()
    scale = sq.unsqueeze(0) + sq.unsqueeze(1)
    d2 = scale - 2.0 * g
    apart = d2 > SAME_POINT * scale
    dist = torch.where(apart, d2, torch.ones_like(d2)).sqrt()
    zero = torch.zeros_like(dist)
    return g, torch.where(apart, dist, zero), torch.where(apart, 1.0 / dist, zero)


def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Distance-wise RKD (paper eqs. 4-5): Huber loss between mean-normalised pairwise distances.

    .. math::
        \psi_D(x_i, x_j) = \frac{\lVert x_i - x_j \rVert_2}{\mu},\quad
        \mu = \frac{1}{N(N-1)} \sum_{i \ne j} \lVert x_i - x_j \rVert_2, \qquad
        L_D = \frac{1}{N^2} \sum_{i, j} \ell_\delta\!\left(\psi_D(t_i, t_j), \psi_D(s_i, s_j)\right)

    :math:`\ell_\delta` = Huber with :math:`\delta = 1` (``smooth_l1``); :math:`\mu` is computed per
    network on the batch. Averaged over all :math:`N^2` ordered pairs as in the authors' code (the
    diagonal is 0 in both and contributes nothing). Memory and work: N x N (:func:`_relations`).
    """
    return _distance_loss(_relations(student_emb), _relations(teacher_emb.detach()), eps)


def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    r"""Angle-wise RKD (paper eqs. 6-7): Huber loss between the cosines of the triplet angles.

    .. math::
        \psi_A(x_i, x_j, x_k) = \cos\angle x_i x_j x_k = \langle e^{ij}, e^{kj} \rangle,\quad
        e^{ij} = \frac{x_i - x_j}{\lVert x_i - x_j \rVert_2}, \qquad
        L_A = \frac{1}{N^3} \sum_{i,j,k} \ell_\delta\!\left(\psi_A(t_i,t_j,t_k), \psi_A(s_i,s_j,s_k)\right)

    Averaged over all :math:`N^3` triples as in the authors' code. The cosine is computed from the Gram matrix,
    :math:`\langle x_i - x_j, x_k - x_j\rangle = g_{ik} - g_{ij} - g_{jk} + g_{jj}`, divided by the two
    distances: N^3 work and float64 memory, where the reference's unit vectors take N^2 D memory and N^3 D work
    (30x slower at N = 64, D = 1024). The unit vector of a zero difference (``i = j``, or two samples with
    identical embeddings) is 0 *with zero gradient*, so such triples contribute a cosine of 0. The reference code
    divides by a clamped norm (``F.normalize``, eps 1e-12) instead: same value, but two identical student
    embeddings get gradients of ~1e12.
    """
    return _angle_loss(_relations(student_emb), _relations(teacher_emb.detach()))


def _distance_loss(student, teacher, eps: float = 1e-12) -> torch.Tensor:
    """:func:`rkd_distance_loss` from the two networks' :func:`_relations`."""
    def psi(relations):
        dist = relations[1]
        n = dist.shape[0]
        mu = dist.sum() / max(n * (n - 1), 1)
        return (dist / mu.clamp_min(eps)).float()

    return F.smooth_l1_loss(psi(student), psi(teacher), beta=1.0)


def _angle_loss(student, teacher) -> torch.Tensor:
    """:func:`rkd_angle_loss` from the two networks' :func:`_relations`."""
    def psi(relations):
        g, _, inv = relations
        # [j, i, k] = <x_i - x_j, x_k - x_j> / (|x_i - x_j| |x_k - x_j|)
        dots = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + g.diagonal().view(-1, 1, 1)
        return (dots * inv.unsqueeze(2) * inv.unsqueeze(1)).float()

    return F.smooth_l1_loss(psi(student), psi(teacher), beta=1.0)


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
        s, t = _relations(student["embedding"]), _relations(teacher["embedding"].detach())  # once for both losses
        terms = {}
        if self.distance_weight:
            terms["rkd.distance"] = self.distance_weight * _distance_loss(s, t)
        if self.angle_weight:
            terms["rkd.angle"] = self.angle_weight * _angle_loss(s, t)
        return terms

    def options(self):
        return {"distance_weight": self.distance_weight, "angle_weight": self.angle_weight}
