"""``kdsvd``: Lee, Kim & Song, ECCV 2018, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition"; reference code: mdistiller ``mdistiller/distillers/KDSVD.py``
(``kdsvd_loss``, ``svd``, ``align_rsv``; a port of the authors' TensorFlow code
github.com/sseung0703/SSKD_SVD by way of RepDistiller's ``distiller_zoo/KDSVD.py``)."""
from __future__ import annotations

from typing import Collection, Iterable, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fastkd.errors import UserError

from . import register_method
from .adapters import COMMON_STAGES, checked_maps, is_auto, match_spatial, shared_taps, stage_names
from .base import Method
from .precision import widen

#: ``layout`` values: how a C x H x W map becomes the matrix whose right singular vectors are compared.
LAYOUTS = ("mdistiller", "paper")
#: The RBF's denominator: :math:`\exp(-d^2 / 8)` in the reference.
RBF_SCALE = 8.0


def _finite(x: torch.Tensor) -> torch.Tensor:
    """Non-finite entries -> 0 (the reference's ``removenan``)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def svd_vectors(x: torch.Tensor, n: int, layout: str = "mdistiller") -> Tuple[torch.Tensor, torch.Tensor]:
    r"""The first ``n`` singular values (N x n, L2-normalised per sample) and right singular vectors
    (N x D x n, each column L2-normalised) of each sample's matrix of an N x C x H x W map.

    ``layout="mdistiller"``: the (C H) x W matrix of mdistiller's ``feat.view(N, C*H, W)`` (D = W);
    ``"paper"``: the HW x C matrix of the paper, the authors' TensorFlow code and RepDistiller (D = C).
    Non-finite values are zeroed before the normalisation, as in the reference. The SVD runs in the
    map's precision (the reference casts to float32; float64 stays float64).
    """
    b, c, h, w = x.shape
    m = x.reshape(b, c * h, w) if layout == "mdistiller" else x.reshape(b, c, h * w).transpose(1, 2)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(1, 2))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_rsv(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    r"""The student's singular vectors matched to the teacher's (reference ``align_rsv``): for each teacher
    vector :math:`t_j`, the student vector of largest :math:`|\cos(s_i, t_j)|` with the sign of that cosine,
    :math:`\hat s_j = \sum_i \mathrm{sign}(c_{ij})\,[\,|c_{ij}| = \max_{i'} |c_{i'j}|\,]\, s_i`, ``c = v_s^T v_t``.
    The selection is piecewise constant: no gradient flows through it (``sign`` has none)."""
    cos = (v_s.transpose(1, 2) @ v_t).detach()
    best = cos.abs().amax(dim=1, keepdim=True)
    mask = torch.where(cos.abs() == best, cos.sign(), torch.zeros_like(cos))
    return v_s @ mask


def _rbf(v: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """``exp(-(v[:, a, k] - prev[:, b, k])^2 / 8)``, N x D x D' x n: one stage's vectors against the previous'."""
    return torch.exp(-(v.unsqueeze(2) - prev.unsqueeze(1)).pow(2) / RBF_SCALE)


def kdsvd_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor], k: int = 1,
               layout: str = "mdistiller") -> torch.Tensor:
    r"""KD-SVD loss over consecutive stage pairs (reference ``kdsvd_loss``).

    Per stage :math:`l`: the teacher's first ``k`` right singular vectors :math:`V^T_l` and the student's
    first ``k + 3`` (:func:`svd_vectors`); the student's are aligned to the teacher's (:func:`align_rsv`)
    and both are scaled by the teacher's normalised singular values :math:`\sigma^T_l` (per vector).
    Between stage :math:`l-1` and :math:`l`, each network's relation is the Gaussian RBF of every pair of
    components, :math:`R_l[n, a, b, j] = \exp(-(V_l[n, a, j] - V_{l-1}[n, b, j])^2 / 8)`, and

    .. math::
        L_{KDSVD} = \frac1N \sum_{l \ge 2} \sum_{n, a, b, j} \big(R^S_l - R^T_l\big)^2

    summed (non-finite entries zeroed, as the reference does) over the batch and over the stage pairs
    (1, 2), (2, 3), ...; a single stage gives no term. With ``layout="mdistiller"`` the student and
    teacher matrices need the same width: maps of different sizes are adaptive-average pooled to the
    smaller H x W first (the reference requires equal sizes). With ``layout="paper"`` the channel counts
    must be equal (vectors over channels) and the sizes may differ. The teacher maps are detached.
    """
    total, prev = None, None
    for f_s, f_t in zip(student_maps, teacher_maps):
        f_s, f_t = widen(f_s), widen(f_t.detach())
        dtype = torch.promote_types(f_s.dtype, f_t.dtype)
        f_s, f_t = f_s.to(dtype), f_t.to(dtype)
        if layout == "mdistiller":
            f_s, f_t = match_spatial(f_s, f_t)
        sigma_t, v_t = svd_vectors(f_t, k, layout)
        _, v_s = svd_vectors(f_s, k + 3, layout)
        v_s = align_rsv(v_s, v_t)
        scale = sigma_t.unsqueeze(1)
        v_s, v_t = v_s * scale, v_t * scale
        if prev is not None:  # a map too small for k vectors has fewer: the common ones (the reference fails)
            j = min(v_t.shape[2], prev[1].shape[2])
            s_rbf, t_rbf = _rbf(v_s[..., :j], prev[0][..., :j]), _rbf(v_t[..., :j], prev[1][..., :j])
            term = _finite((s_rbf - t_rbf).pow(2)).sum()
            total = term if total is None else total + term
        prev = (v_s, v_t)
    if total is None:
        raise ValueError("kdsvd_loss needs at least two stages (its terms relate consecutive stages)")
    return total / student_maps[0].shape[0]


@register_method("kdsvd")
class KDSVD(Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * ``kdsvd_loss(student[stages], teacher[stages], k)``.

    ``stages``: ``auto`` (default) = every stage tap both models have, once the trainer calls
    :meth:`select_taps` (``stage1,stage2,stage3`` before that), the reference's ``feats[1:]``; or an
    explicit list of at least two. ``k`` = 1 teacher singular vector (the student's k + 3 are searched),
    ``weight`` 1, CE weight 1: mdistiller ``CFG.KDSVD`` (``K``, ``LOSS.FEAT_WEIGHT``, ``LOSS.CE_WEIGHT``).

    ``layout``: ``mdistiller`` (default) takes mdistiller's (C H) x W matrix per sample, so the singular
    vectors run over the map's *width* and any channel counts pair; ``paper`` takes the HW x C matrix of
    the paper, the authors' TensorFlow code and RepDistiller (vectors over channels), which needs the
    same channel count in student and teacher at every stage (a UserError otherwise).

    As in the reference, the teacher's singular vectors keep the signs the SVD routine returns (the
    student's are aligned to them, the teacher's are not fixed), so the RBF targets between stages can
    differ between SVD back-ends (CPU LAPACK, cuSOLVER).
    """

    paper = "Lee et al. 2018"
    peers = frozenset({"mdistiller"})

    needs = frozenset(COMMON_STAGES)
    ce_weight = 1.0

    def __init__(self, weight: float = 1.0, k: int = 1, stages: Union[str, Iterable[str]] = "auto",
                 layout: str = "mdistiller"):
        super().__init__()
        if int(k) < 1:
            raise UserError(f"kdsvd.k must be >= 1 (singular vectors per stage), got {k}")
        if layout not in LAYOUTS:
            raise UserError(f"kdsvd.layout={layout!r}: expected one of {', '.join(LAYOUTS)}")
        self.weight, self.k, self.layout = float(weight), int(k), layout
        self.auto = is_auto(stages)
        self.stages = COMMON_STAGES if self.auto else stage_names(stages, "kdsvd.stages")
        if len(self.stages) < 2:
            raise UserError(f"kdsvd.stages={stages!r}: give at least two stages (the loss relates consecutive ones)")
        self.needs = frozenset(self.stages)

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: every stage tap both models have (at least two)."""
        if self.auto:
            self.stages = shared_taps("kdsvd", student_taps, teacher_taps, least=2)
            self.needs = frozenset(self.stages)

    def setup(self, student_signals, teacher_signals):
        for name in self.stages:
            s, t = checked_maps(student_signals, teacher_signals, name)
            if self.layout == "paper" and s.shape[1] != t.shape[1]:
                raise UserError(f"kdsvd.layout=paper compares singular vectors over channels, but {name} has "
                                f"{s.shape[1]} student and {t.shape[1]} teacher channels; use kdsvd.layout=mdistiller")

    def forward(self, student, teacher, labels, index=None):
        loss = kdsvd_loss([student[j] for j in self.stages], [teacher[j] for j in self.stages], self.k, self.layout)
        return {"kdsvd": self.weight * loss}

    def options(self):
        return {"weight": self.weight, "k": self.k, "stages": list(self.stages), "layout": self.layout}
