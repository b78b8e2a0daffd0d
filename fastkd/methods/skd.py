"""``skd``: Jeong, Lee & Choi, CVPR 2026, "Streamlined Knowledge Distillation": an instance-wise KL term and a
direction-wise term, the Mahalanobis distance between the student's and the teacher's Gram matrices of
L2-normalised logits. Reference code: torchdistill ``SKDInstanceLoss`` and ``SKDDirectionLoss``
(``torchdistill/losses/mid_level.py``, which cite the paper at openaccess.thecvf.com, CVPR2026) and their config
``configs/sample/ilsvrc2012/skd/resnet18_from_resnet34.yaml``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register_method
from .adapters import check_option
from .base import Method
from .kd import soft_kl
from .precision import full_precision, widen


def skd_instance_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Instance-wise term (reference ``SKDInstanceLoss``): the batch-mean KL divergence of the softened
    distributions, *without* KD's :math:`T^2` factor.

    .. math::
        L_{INS} = \frac1N \sum_n \mathrm{KL}\big(\mathrm{softmax}(z^t_n / T) \,\Vert\, \mathrm{softmax}(z^s_n / T)\big)

    Float32 for half-precision inputs, float64 for float64; the teacher's logits are detached."""
    return soft_kl(student_logits, teacher_logits, temperature) / float(temperature) ** 2


def skd_direction_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tikhonov: float) -> torch.Tensor:
    r"""Direction-wise term (reference ``SKDDirectionLoss``):

    .. math::
        G = \hat Z \hat Z^\top\ (\hat Z: \text{the N x C logits, each row L2-normalised}),\qquad D = G^s - G^t,

        \Sigma' = \mathrm{cov}(D) + \lambda I,\qquad
        L_{DIR} = \frac1N \sum_{i} \sqrt{D_{i,:}\, \Sigma'^{-1} D_{i,:}^\top}

    :math:`\mathrm{cov}(D)`: the N x N covariance of :math:`D`'s columns over its rows (``torch.cov(D.T)``, divided
    by N - 1); the gradient flows through :math:`\Sigma'` as in the reference. :math:`\lambda` (``tikhonov``) > 0
    makes :math:`\Sigma'` positive definite, so it is inverted through its Cholesky factor. A batch of one has
    no covariance (the reference gives NaN): the term is then 0, with zero gradient; so is the distance of a row of
    :math:`D` that is 0 (the reference's gradient is NaN there, through the square root). Computed in float32 for
    half-precision inputs (autocast off), float64 for float64; the teacher's logits are detached.
    """
    z_s, z_t = widen(student_logits), widen(teacher_logits.detach())
    n = z_s.shape[0]
    if n < 2:
        return z_s.sum() * 0.0
    with full_precision(z_s.device):
        u_s, u_t = F.normalize(z_s, dim=1), F.normalize(z_t, dim=1)
        d = u_s @ u_s.t() - u_t @ u_t.t()
        centred = d - d.mean(dim=0, keepdim=True)
        cov = centred.t() @ centred / (n - 1) + tikhonov * torch.eye(n, dtype=d.dtype, device=d.device)
        solved = torch.cholesky_solve(d.t(), torch.linalg.cholesky(cov))  # Sigma'^-1 D^T
        squared = (d * solved.t()).sum(dim=1)
        # a row of D that is 0 (the student's relations equal the teacher's) has distance 0 and gradient 0, where
        # sqrt's derivative at 0 is infinite and would make the whole gradient NaN
        zero = squared <= 0
        return torch.where(zero, 0.0, squared.masked_fill(zero, 1.0).sqrt()).mean()


@register_method("skd")
class SKD(Method):
    """Total loss = ``ce_weight`` * CE + ``instance_weight`` * L_INS + ``direction_weight`` * L_DIR; terms
    ``skd.instance`` and ``skd.direction``.

    One method with two terms, because torchdistill's only config combines the two losses in one weighted sum
    (``skd/resnet18_from_resnet34.yaml``: ``instance`` weight 1 with T = 4, ``direction`` weight 1 with
    Tikhonov factor 0.1) and neither appears alone anywhere; either term can be switched off with its weight.
    That config has no cross-entropy term, hence CE weight 0 (``--ce-weight`` adds one). T = 4 and
    lambda = 0.1 are also the loss classes' defaults (their docstrings: "the paper's public code repository
    uses" them; the paper gives no value).
    """

    paper = "Jeong et al. 2026"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"logits"})
    ce_weight = 0.0

    def __init__(self, temperature: float = 4.0, tikhonov: float = 0.1, instance_weight: float = 1.0,
                 direction_weight: float = 1.0):
        super().__init__()
        check_option(float(tikhonov) > 0, "skd", "tikhonov", tikhonov, "must be > 0 (it regularises the covariance)")
        self.temperature, self.tikhonov = float(temperature), float(tikhonov)
        self.instance_weight, self.direction_weight = float(instance_weight), float(direction_weight)

    def forward(self, student, teacher, labels, index=None):
        z_s, z_t = student["logits"], teacher["logits"]
        return {"skd.instance": self.instance_weight * skd_instance_loss(z_s, z_t, self.temperature),
                "skd.direction": self.direction_weight * skd_direction_loss(z_s, z_t, self.tikhonov)}

    def options(self):
        return {"temperature": self.temperature, "tikhonov": self.tikhonov,
                "instance_weight": self.instance_weight, "direction_weight": self.direction_weight}
