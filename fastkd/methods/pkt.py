"""``pkt``: Passalis & Tefas, ECCV 2018, "Learning Deep Representations with Probabilistic Knowledge
Transfer" (arXiv:1803.10837); reference code: github.com/passalis/probabilistic_kt."""
from __future__ import annotations

import torch

from . import register_method
from .base import Method


def cosine_probabilities(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Row-stochastic N x N matrix of the cosine kernel: :math:`P_{ij} = K_{ij} / \sum_k K_{ik}`,
    :math:`K_{ij} = \frac12 \left(\frac{x_i^\top x_j}{\lVert x_i\rVert \lVert x_j\rVert} + 1\right) \in [0, 1]`."""
    x = x.flatten(1)
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""KL divergence between the teacher's and the student's conditional probabilities of the batch.

    .. math::
        L_{PKT} = \frac{1}{N^2} \sum_{i=1}^{N} \sum_{j=1}^{N}
                  p_{j|i} \log \frac{p_{j|i} + \epsilon}{q_{j|i} + \epsilon}

    with :math:`p = ` :func:`cosine_probabilities` of the teacher embeddings and :math:`q` of the
    student's (paper eqs. 9-10, cosine kernel, section 3.2; the two embeddings may have different
    widths). As in the authors' code, the sum includes :math:`j = i` (self-similarity 1 in both
    networks) and is averaged over the :math:`N^2` entries, i.e. the mean over anchors ``i`` of the
    conditional KL divided by ``N``; the weight below is tied to this normalisation.
    """
    p = cosine_probabilities(teacher_emb.detach().float(), eps)
    q = cosine_probabilities(student_emb.float(), eps)
    return (p * torch.log((p + eps) / (q + eps))).mean()


@register_method("pkt")
class PKT(Method):
    """Total loss = ``ce_weight`` * CE + ``weight`` * ``pkt_loss`` on the ``embedding`` tap.

    Weight 30000, CE weight 1: the CRD / mdistiller CIFAR-100 setting for the authors' loss
    normalisation (the paper itself trains the representation with the PKT loss alone).
    """

    paper = "Passalis & Tefas 2018"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset({"embedding"})
    ce_weight = 1.0

    def __init__(self, weight: float = 30000.0, eps: float = 1e-7):
        super().__init__()
        self.weight, self.eps = float(weight), float(eps)

    def forward(self, student, teacher, labels, index=None):
        return {"pkt": self.weight * pkt_loss(student["embedding"], teacher["embedding"], self.eps)}

    def options(self):
        return {"weight": self.weight, "eps": self.eps}
