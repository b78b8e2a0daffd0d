"""``cc``: Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, ICCV 2019, "Correlation Congruence for Knowledge
Distillation"; reference code: torchdistill ``CCKDLoss`` (``torchdistill/losses/mid_level.py``:
``compute_cc_mat_by_gaussian_rbf``, ``forward``), its embedding heads ``Linear4CCKD``
(``torchdistill/models/wrapper.py``) and its configuration
``configs/sample/ilsvrc2012/cckd/resnet18_from_resnet50.yaml``."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from fastkd.errors import UserError

from . import register_method
from .base import Method
from .precision import full_precision, widen

KERNELS = ("gaussian", "bilinear")


def correlation_matrix(f: torch.Tensor, gamma: float = 0.4, max_p: int = 2, kernel: str = "gaussian") -> torch.Tensor:
    r"""N x N correlation of a batch of embeddings ``f`` (N x D).

    ``gaussian``: the order-``max_p`` Taylor expansion of the Gaussian RBF
    :math:`\exp(-\gamma \lVert f_i - f_j \rVert^2) = e^{-2\gamma} e^{2\gamma f_i^\top f_j}` (exact for unit
    vectors) as the reference computes it:

    .. math::
        k(f_i, f_j) = e^{-2\gamma} \sum_{p=0}^{P} \frac{(2\gamma)^p}{p!} \big(f_i^\top f_j\big)^p

    ``bilinear``: :math:`k(f_i, f_j) = f_i^\top f_j`. As in the reference, the embeddings are *not*
    normalised (the expansion is applied to the linear heads' raw outputs), so the kernel grows as the
    ``2 max_p``-th power of their norms: large embeddings (an untrained student's) give large losses.
    """
    g = f @ f.t()
    if kernel == "bilinear":
        return g
    k = torch.ones_like(g)
    for p in range(1, max_p + 1):
        k = k + (2.0 * gamma) ** p / math.factorial(p) * g.pow(p)
    return k * math.exp(-2.0 * gamma)


def cc_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, gamma: float = 0.4, max_p: int = 2,
            kernel: str = "gaussian") -> torch.Tensor:
    r"""Correlation congruence of two batches of (head-projected) embeddings:

    .. math::
        L_{CC} = \frac{1}{N^2} \left\lVert \Psi(F_S) - \Psi(F_T) \right\rVert_2

    with :math:`\Psi` = :func:`correlation_matrix`. The norm is the Frobenius norm *itself*, not its
    square (the reference's ``torch.dist(student_cc, teacher_cc, 2)``), divided by :math:`N^2` (its
    ``reduction='batchmean'``). ``teacher_emb`` is not detached here: it is the output of the teacher's
    embedding head, which trains with this loss as in the reference (the teacher's own features are
    detached by the method). Computed in the inputs' precision (float32 for half inputs); the norm as
    :math:`s \lVert D / s \rVert_2` with :math:`s = \max |D|` (constant for the gradient), so that large
    embeddings (a randomly initialised deep teacher's) do not overflow its sum of squares in float32.
    """
    n = teacher_emb.shape[0]
    k_s = correlation_matrix(widen(student_emb), gamma, max_p, kernel)
    k_t = correlation_matrix(widen(teacher_emb), gamma, max_p, kernel)
    d = k_s - k_t
    scale = d.detach().abs().amax().clamp_min(torch.finfo(d.dtype).tiny)
    return scale * torch.linalg.vector_norm(d / scale) / (n * n)


@register_method("cc", "cckd")
class CC(Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * ``cc_loss(head_s(student), head_t(teacher))`` on ``embedding``.

    ``head_s``, ``head_t``: ``nn.Linear`` layers (with bias, PyTorch's default initialisation) from each
    network's embedding width to ``feat_dim`` = 128, built in :meth:`setup` (the reference's
    ``Linear4CCKD`` on the flattened ``avgpool`` output of each network). Both train with the student; the
    teacher's embedding is detached before its head, the teacher head is trained by this loss (the
    reference's teacher ``requires_grad: True`` with the backbone frozen).

    Defaults of torchdistill's ImageNet configuration (ResNet-50 -> ResNet-18): Gaussian kernel,
    ``gamma`` 0.4, ``max_p`` 2, ``weight`` 0.003. CE weight 1: that configuration pairs the CC term with
    a KL term at T = 1 (its ``KDLoss`` with ``alpha = 0``, which returns the KL alone) instead of the
    hard-label CE; ``--method kd+cc --opt kd.temperature=1 --opt kd.weight=1 --ce-weight 0`` reproduces it.
    """

    paper = "Peng et al. 2019"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"embedding"})
    ce_weight = 1.0

    def __init__(self, weight: float = 0.003, gamma: float = 0.4, max_p: int = 2, feat_dim: int = 128,
                 kernel: str = "gaussian"):
        super().__init__()
        if not float(gamma) > 0:
            raise UserError(f"cc.gamma must be > 0 (the Gaussian kernel's width), got {gamma}")
        if int(max_p) < 1:
            raise UserError(f"cc.max_p must be >= 1 (the Taylor expansion's order), got {max_p}")
        if int(feat_dim) < 1:
            raise UserError(f"cc.feat_dim must be >= 1 (the embedding heads' width), got {feat_dim}")
        if kernel not in KERNELS:
            raise UserError(f"cc.kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
        self.weight, self.gamma, self.max_p = float(weight), float(gamma), int(max_p)
        self.feat_dim, self.kernel = int(feat_dim), kernel
        self.head_s: Optional[nn.Linear] = None
        self.head_t: Optional[nn.Linear] = None

    def setup(self, student_signals, teacher_signals):
        s, t = student_signals["embedding"], teacher_signals["embedding"]
        self.head_s = nn.Linear(s[0].numel(), self.feat_dim)
        self.head_t = nn.Linear(t[0].numel(), self.feat_dim)

    def forward(self, student, teacher, labels, index=None):
        if self.head_s is None:
            raise RuntimeError("cc: setup() must run before the first forward (it builds the embedding heads)")
        s, t = student["embedding"].flatten(1), teacher["embedding"].detach().flatten(1)
        f_s = self.head_s(s.to(self.head_s.weight.dtype))  # under --amp: in the step's precision
        f_t = self.head_t(t.to(self.head_t.weight.dtype))
        with full_precision(f_s.device):
            loss = cc_loss(f_s, f_t, self.gamma, self.max_p, self.kernel)
        return {"cc": self.weight * loss}

    def options(self):
        return {"weight": self.weight, "gamma": self.gamma, "max_p": self.max_p, "feat_dim": self.feat_dim,
                "kernel": self.kernel}
