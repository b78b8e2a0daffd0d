"""``kta``: He, Shen, Tian, Gong, Sun & Yan, CVPR 2019, "Knowledge Adaptation for Efficient Semantic Segmentation"
(arXiv:1903.04688): knowledge translation and adaptation (KTA) plus affinity distillation (the KTAAD method).
Reference code: torchdistill ``KTALoss``, ``AffinityLoss``, ``RegularizationLoss``
(``torchdistill/losses/mid_level.py``), ``Paraphraser4FactorTransfer`` / ``Teacher4FactorTransfer`` /
``Student4KTAAD`` (``torchdistill/models/wrapper.py``) and the two-stage config
``configs/legacy/sample/coco2017/multi_stage/ktaad/lraspp_mobilenet_v3_large_from_deeplabv3_resnet50.yaml``."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import register_method
from .adapters import COMMON_STAGES, check_option, checked_maps, match_spatial
from .ft import Paraphraser, ParaphraserStages, ft_loss, reconstruction_loss
from .precision import full_precision, widen


def affinity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    r"""Affinity distillation loss of two N x C x H x W maps of the same shape (torchdistill ``AffinityLoss``):

    .. math::
        L_{aff} = \frac1N \sum_n \sum_c \frac{1}{HW}\big\lVert s_{nc} s_{nc}^\top - t_{nc} t_{nc}^\top\big\rVert_F

    with :math:`s_{nc}, t_{nc}` channel c's HW-vector of sample n, L2-normalised over the positions (its HW x HW
    self-affinity). For unit vectors
    :math:`\lVert s s^\top - t t^\top\rVert_F = \sqrt2\,\lVert s - (s\cdot t)\,t\rVert`, which is what is
    computed: the same value and gradient without the HW x HW matrices (O(HW) per channel). A channel that is zero
    everywhere (the reference divides by its zero norm) is guarded by ``F.normalize``'s 1e-12.
    """
    s = F.normalize(widen(student).flatten(2), dim=2)
    t = F.normalize(widen(teacher.detach()).flatten(2), dim=2)
    cos = (s * t).sum(dim=2, keepdim=True)
    per_channel = math.sqrt(2) * torch.linalg.vector_norm(s - cos * t, dim=2) / s.shape[2]
    return per_channel.sum(dim=1).mean()


@register_method("kta", "ktaad", "affinity")
class KTA(ParaphraserStages):
    r"""Two stages, scheduled by epoch (:meth:`set_epoch`, 0-based):

    **Stage 1** (epochs ``0 .. stage1_epochs-1``, :attr:`exclusive`, :attr:`trains_student` False): the teacher's
    auto-encoder (FT's :class:`~fastkd.methods.ft.Paraphraser` as torchdistill's ``Paraphraser4FactorTransfer``
    with ``uses_bn``: 3x3 convolutions with bias, each followed by BatchNorm and LeakyReLU(0.1), encoder C -> C ->
    kC -> kC, decoder back, kC = int(C * ``rate``)) learns to reconstruct the teacher's map ``T`` alone: terms
    ``kta.reconstruction`` = MSE(decoder(encoder(T)), T) (mean) and ``kta.regularization`` = ``l1_weight`` *
    :math:`\lVert encoder(T)\rVert_1` (the sum over the whole batch tensor, torchdistill ``RegularizationLoss`` p=1).

    **Stage 2** (later epochs): the auto-encoder is frozen (no gradient, BatchNorm on its running statistics) and
    its encoder output :math:`E(T)` is the translated knowledge; terms ``kta.adapt`` = ``weight`` *
    :func:`~fastkd.methods.ft.ft_loss`\ (feature_adapter(S), E(T), p, q = q) (torchdistill ``KTALoss``: FT's
    loss with a q-norm normalisation) and ``kta.affinity`` = ``affinity_weight`` *
    :func:`affinity_loss`\ (affinity_adapter(S), E(T)), next to the CE (weight 1). ``feature_adapter`` = 3x3
    conv + BN + ReLU, ``affinity_adapter`` = 3x3 conv, both with bias, student channels -> kC (``Student4KTAAD``).
    Where the spatial sizes differ the larger map is average-pooled to the smaller one after the adapters.
    Before any :meth:`set_epoch` call the method is in stage 2 (the trainer always calls it).

    **Defaults** (the torchdistill config): ``rate`` k = 0.5, ``l1_weight`` 1e-7, ``stage1_epochs`` 1, ``weight``
    50 (``adapt`` factor), ``affinity_weight`` 1 (``aff`` factor), ``p`` = 1, ``q`` = 2. ``--method affinity`` is
    this method (``--opt kta.weight=0`` leaves the affinity term alone). The stage-1 optimiser (its SGD lr 0.1)
    and the stage-2 poly schedule are the trainer's instead; the student trains ``epochs - stage1_epochs`` epochs.

    **From segmentation to classification**: the reference translates and adapts the networks' per-pixel *score
    maps* (DeepLabV3's classifier output and LR-ASPP's ``high_classifier`` output, 21 channels); a classifier's
    logits have no positions for an affinity, so here both networks' stage maps are used, as in the paper
    (the teacher's last feature map): ``stage`` = ``auto`` (default), the last stage both models have once
    :meth:`select_taps` runs (``stage3`` before that), or a ``stageK`` name. The reference's stage-2 auto-encoder
    is a fresh module in training mode (BatchNorm on each batch's statistics); here it is in eval mode, so a
    sample's target does not depend on its batch.
    """

    paper = "He et al. 2019"
    peers = frozenset({"torchdistill"})

    needs = frozenset(COMMON_STAGES[-1:])
    ce_weight = 1.0

    def __init__(self, weight: float = 50.0, affinity_weight: float = 1.0, rate: float = 0.5, l1_weight: float = 1e-7,
                 stage1_epochs: int = 1, p: float = 1.0, q: float = 2.0, stage: str = "auto"):
        check_option(int(stage1_epochs) >= 1, "kta", "stage1_epochs", stage1_epochs,
                     "must be >= 1 (the teacher's auto-encoder trains then)")
        check_option(0 < float(rate) <= 1, "kta", "rate", rate,
                     "must be in (0, 1] (the encoder keeps int(C * rate) channels)")
        check_option(float(q) > 0, "kta", "q", q, "must be > 0 (the norm that normalises each map)")
        check_option(float(l1_weight) >= 0, "kta", "l1_weight", l1_weight, "is a loss weight; give a value >= 0")
        super().__init__(stage1_epochs, stage, rate)
        self.weight, self.affinity_weight = float(weight), float(affinity_weight)
        self.l1_weight, self.p, self.q = float(l1_weight), float(p), float(q)
        self.feature_adapter: Optional[nn.Module] = None
        self.affinity_adapter: Optional[nn.Module] = None

    def setup(self, student_signals, teacher_signals):
        s, t = checked_maps(student_signals, teacher_signals, self.stage)
        mid = self.factor_channels(t)
        self.paraphraser = Paraphraser(t.shape[1], mid, batch_norm=True, bias=True)
        self.feature_adapter = nn.Sequential(nn.Conv2d(s.shape[1], mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU())
        self.affinity_adapter = nn.Conv2d(s.shape[1], mid, 3, padding=1)
        self._apply_stage()

    def forward(self, student, teacher, labels, index=None):
        if self.paraphraser is None:
            raise RuntimeError("kta: setup() must run before the first forward (it builds its auto-encoder, adapters)")
        dtype = self.affinity_adapter.weight.dtype  # under --amp: the step's precision (autocast)
        t = teacher[self.stage].detach().to(dtype)
        if self.exclusive:
            code = self.paraphraser.encoder(t)
            rebuilt = self.paraphraser.decoder(code)
            with full_precision(t.device):
                return {"kta.reconstruction": reconstruction_loss(rebuilt, t),
                        "kta.regularization": self.l1_weight * widen(code).abs().sum()}
        with torch.no_grad():
            code = self.paraphraser.encoder(t)
        s = student[self.stage].to(dtype)
        adapted, code_a = match_spatial(self.feature_adapter(s), code)
        related, code_r = match_spatial(self.affinity_adapter(s), code)
        with full_precision(t.device):
            return {"kta.adapt": self.weight * ft_loss(adapted, code_a, self.p, q=self.q),
                    "kta.affinity": self.affinity_weight * affinity_loss(related, code_r)}

    def options(self):
        return {"weight": self.weight, "affinity_weight": self.affinity_weight, "rate": self.rate,
                "l1_weight": self.l1_weight, "stage1_epochs": self.stage1_epochs, "p": self.p, "q": self.q,
                "stage": self.stage}
