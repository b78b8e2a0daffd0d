"""``srd``: Miles & Mikolajczyk, AAAI 2024, "Understanding the Role of the Projector in Knowledge Distillation"
(arXiv:2303.11098): a linear projector on the student's embedding, batch normalisation of both embeddings, a
log-sum of the fourth powers of their difference, plus KD on the logits. Reference code: the authors'
github.com/roymiles/Simple-Recipe-Distillation (``imagenet/torchdistill/losses/single.py``,
``OurDistillationLoss``; ``deit/main.py``) and torchdistill ``SRDLoss`` with ``SRDModelWrapper``
(``torchdistill/losses/mid_level.py``, ``torchdistill/models/wrapper.py``; config
``configs/sample/ilsvrc2012/srd/resnet18_from_resnet34.yaml``).

SRD applies no part of the teacher network to the student's features (its teacher side is the teacher's pooled
features and logits), so it needs no :meth:`~fastkd.methods.base.Method.bind_teacher` and the teacher cache serves
it. Applying the teacher's classifier to the student's features is SRRL (Yang et al., ICLR 2021, "Knowledge
Distillation via Softmax Regression Representation Learning"), another method."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fastkd.errors import UserError

from . import register_method
from .adapters import check_option
from .base import Method
from .kd import soft_kl
from .precision import full_precision, widen


def batch_standardise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Each column of an N x D batch minus its batch mean, over sqrt(its biased batch variance + ``eps``): what a
    ``BatchNorm1d(D, eps, affine=False)`` in training mode outputs."""
    return (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0, unbiased=False) + eps)


def srd_feature_loss(projected: torch.Tensor, teacher_embedding: torch.Tensor, exponent: float = 4.0,
                     eps: float = 1e-4) -> torch.Tensor:
    r"""The representation term (reference ``forward_loss``; torchdistill ``feat_distill_loss``):

    .. math::
        L_{feat} = \log \sum_{n,d} \big| \mathrm{BN}(W z^s + b)_{n,d} - \mathrm{BN}(z^t)_{n,d} \big|^{p}

    ``projected`` = :math:`W z^s + b`, the student's N x D_s embedding after the linear projector (N x D_t);
    ``teacher_embedding`` = :math:`z^t`, the teacher's pooled features; BN = batch standardisation without affine
    parameters (:func:`batch_standardise`, eps 1e-4), p = ``exponent``. The log of the sum is the paper's soft
    maximum of the element-wise distances. Both sides use the batch's statistics, as the authors' loss-module
    BatchNorms in training mode do. A batch of one has no batch statistics: the term is then 0, with zero gradient.
    Computed in float32 for half-precision inputs, float64 for float64; the teacher's side is detached.
    """
    s, t = widen(projected), widen(teacher_embedding.detach())
    if s.shape[0] < 2:
        return s.sum() * 0.0
    diff = batch_standardise(s, eps) - batch_standardise(t, eps)
    return torch.log(diff.abs().pow(exponent).sum())


@register_method("srd")
class SRD(Method):
    r"""Total loss = ``ce_weight`` * CE + ``feat_weight`` * :func:`srd_feature_loss` + ``kd_weight`` * KD; terms
    ``srd.feat`` and ``srd.kd`` (KD: :math:`T^2` KL of the softened distributions, batch mean).

    Defaults are the reference's (torchdistill ``srd/resnet18_from_resnet34.yaml`` and the authors'
    ``configs/ilsvrc2012/ours/res3418.yaml``): exponent 4, T = 1, the representation term doubled (the ``2 *`` of
    ``SRDLoss`` / ``l_rep = 2.0 * ...``), KD weight 1, CE weight 1, BN eps 1e-4. The authors' KD term has the
    :math:`T^2` factor that torchdistill's lacks; both agree at the default T = 1.

    The projector (``nn.Linear``, student embedding width -> teacher embedding width, PyTorch's default
    initialisation, as the reference's ``nn.Linear(512, 512)``) is built in :meth:`setup`, trained with the
    student and saved with the method. Signals: ``embedding`` (the classifier's input, pooled) and ``logits``.
    """

    paper = "Miles & Mikolajczyk 2024"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"embedding", "logits"})
    ce_weight = 1.0

    def __init__(self, exponent: float = 4.0, temperature: float = 1.0, feat_weight: float = 2.0,
                 kd_weight: float = 1.0, eps: float = 1e-4):
        super().__init__()
        check_option(float(exponent) > 0, "srd", "exponent", exponent, "must be > 0 (the feature distances' power)")
        self.exponent, self.temperature, self.eps = float(exponent), float(temperature), float(eps)
        self.feat_weight, self.kd_weight = float(feat_weight), float(kd_weight)
        self.projector: Optional[nn.Linear] = None

    def setup(self, student_signals, teacher_signals):
        s, t = student_signals["embedding"], teacher_signals["embedding"]
        if s.dim() != 2 or t.dim() != 2:
            raise UserError(f"srd needs N x D embeddings, got student {tuple(s.shape)} and teacher {tuple(t.shape)}")
        self.projector = nn.Linear(s.shape[1], t.shape[1])

    def forward(self, student, teacher, labels, index=None):
        if self.projector is None:
            raise RuntimeError("srd: setup() must run before the first forward (it builds the projector)")
        projected = self.projector(student["embedding"].to(self.projector.weight.dtype))  # under --amp: step precision
        with full_precision(projected.device):
            feat = srd_feature_loss(projected, teacher["embedding"], self.exponent, self.eps)
        kd = soft_kl(student["logits"], teacher["logits"], self.temperature)
        return {"srd.feat": self.feat_weight * feat, "srd.kd": self.kd_weight * kd}

    def options(self):
        return {"exponent": self.exponent, "temperature": self.temperature, "feat_weight": self.feat_weight,
                "kd_weight": self.kd_weight, "eps": self.eps}
