"""``dist_plus``: Huang, You, Wang, Qian & Xu, TPAMI 47(7) 2025, "DIST+: Knowledge Distillation From a Stronger
Adaptive Teacher" (doi:10.1109/TPAMI.2025.3554235): DIST's logit relations plus the same correlation loss on a
feature map. Reference code: torchdistill ``DISTPlusLoss`` (``torchdistill/losses/mid_level.py``, a subclass of
``DISTLoss``) and its config ``configs/sample/ilsvrc2012/dist_plus/resnet18_from_resnet34.yaml``; the logit part
is :mod:`fastkd.methods.dist`."""
from __future__ import annotations

from typing import Collection, Optional, Tuple

import torch

from . import register_method
from .adapters import COMMON_STAGES, check_option, checked_maps, is_auto, match_spatial, one_stage, shared_taps
from .base import Method
from .dist import dist_loss, pearson_rows
from .ickd import ChannelEmbed
from .precision import full_precision, widen


def feature_relations(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-8) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""DIST+'s two feature-map relations ``(channel, spatial)`` of N x C x H x W maps of equal shape.

    .. math::
        L_{channel} = 1 - \frac{1}{N H W} \sum_{n,h,w} \rho\big(F^s_{n,:,h,w}, F^t_{n,:,h,w}\big),\qquad
        L_{spatial} = 1 - \frac{1}{H W} \sum_{h,w} \rho\big(A^s_{:,h,w}, A^t_{:,h,w}\big),\quad
        A_{n,h,w} = \sum_c F_{n,c,h,w}

    with :math:`\rho` the Pearson correlation of :func:`~fastkd.methods.dist.pearson_rows` (``eps`` added to the
    product of the norms): across channels at each position of each sample, and across the batch at each position
    of the channel-summed map (the reference's ``spatial_relation`` transposes the N x HW map, so each position's
    correlation runs over the batch). Computed in the inputs' precision (float32 for half inputs); ``f_t`` detached.

    Deviation: the reference's ``channel_relation`` returns the mean correlation itself, which its loss then adds,
    so minimising it would anti-correlate the student's channels with the teacher's, the opposite of every other
    DIST term; here it is ``1 -`` that mean (the gradient of the reference's term with its sign reversed).
    """
    f_s, f_t = widen(f_s), widen(f_t.detach())
    rows_s = f_s.permute(0, 2, 3, 1).reshape(-1, f_s.shape[1])  # one row per (n, h, w): the C channels
    rows_t = f_t.permute(0, 2, 3, 1).reshape(-1, f_t.shape[1])
    channel = 1 - pearson_rows(rows_s, rows_t, eps).mean()
    spatial = 1 - pearson_rows(f_s.sum(dim=1).flatten(1).t(), f_t.sum(dim=1).flatten(1).t(), eps).mean()
    return channel, spatial


@register_method("dist_plus", "distplus")
class DISTPlus(Method):
    """Total loss = ``ce_weight`` * CE + ``weight`` * (``beta`` L_inter + ``gamma`` L_intra + ``iota`` L_channel +
    ``kappa`` L_spatial); terms ``dist_plus.inter``, ``.intra`` (:func:`~fastkd.methods.dist.dist_loss` at
    ``temperature``), ``.channel`` and ``.spatial`` (:func:`feature_relations` on the ``stage`` tap).

    Defaults are torchdistill's ImageNet config (``dist_plus/resnet18_from_resnet34.yaml``): beta = gamma = 2,
    iota = kappa = 1, tau = 1, term weight 2, CE weight 1, the last stage (``layer4``). The weights mean what the
    reference *code* does with them (``gamma`` = intra, passed to ``DISTLoss``; ``iota`` = channel, ``kappa`` =
    spatial); its docstring names them otherwise (iota intra, kappa channel, gamma spatial). ``eps`` = 1e-8.

    ``stage``: ``auto`` (default) = the last stage tap both models have, once the trainer calls
    :meth:`select_taps` (``stage3`` before that), or a stage tap. The reference pairs maps of equal shape
    (ResNet18/34 ``layer4``: 512 x 7 x 7); here a student map with other channels goes through a
    :class:`~fastkd.methods.ickd.ChannelEmbed` (1x1 conv + BN, built in :meth:`setup`) and the larger map is
    average-pooled to the smaller's H x W (:func:`~fastkd.methods.adapters.match_spatial`).
    """

    paper = "Huang et al. 2025"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"logits", COMMON_STAGES[-1]})
    ce_weight = 1.0

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, iota: float = 1.0, kappa: float = 1.0,
                 temperature: float = 1.0, weight: float = 2.0, eps: float = 1e-8, stage: str = "auto"):
        super().__init__()
        for option, value in (("gamma", gamma), ("iota", iota), ("kappa", kappa)):
            check_option(float(value) >= 0, "dist_plus", option, value, "is a loss weight; give a value >= 0")
        self.auto, self.stage = is_auto(stage), one_stage(stage, "dist_plus.stage")
        self.beta, self.gamma, self.iota, self.kappa = float(beta), float(gamma), float(iota), float(kappa)
        self.temperature, self.weight, self.eps = float(temperature), float(weight), float(eps)
        self.needs = frozenset({"logits", self.stage})
        self.embed: Optional[ChannelEmbed] = None
        self._ready = False

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stage=auto``: the last stage tap both models have."""
        if self.auto:
            self.stage = shared_taps("dist_plus", student_taps, teacher_taps)[-1]
            self.needs = frozenset({"logits", self.stage})

    def setup(self, student_signals, teacher_signals):
        s, t = checked_maps(student_signals, teacher_signals, self.stage)
        self.embed = ChannelEmbed(s.shape[1], t.shape[1]) if s.shape[1] != t.shape[1] else None
        self._ready = True

    def forward(self, student, teacher, labels, index=None):
        if not self._ready:
            raise RuntimeError("dist_plus: setup() must run before the first forward (it sizes the channel embedding)")
        f_s = student[self.stage]
        if self.embed is not None:
            f_s = self.embed(f_s.to(self.embed[0].weight.dtype))  # under --amp: in the step's precision
        inter, intra = dist_loss(student["logits"], teacher["logits"], self.temperature, self.eps)
        with full_precision(f_s.device):
            channel, spatial = feature_relations(*match_spatial(f_s, teacher[self.stage]), self.eps)
        w = self.weight
        return {"dist_plus.inter": w * self.beta * inter, "dist_plus.intra": w * self.gamma * intra,
                "dist_plus.channel": w * self.iota * channel, "dist_plus.spatial": w * self.kappa * spatial}

    def options(self):
        return {"beta": self.beta, "gamma": self.gamma, "iota": self.iota, "kappa": self.kappa,
                "temperature": self.temperature, "weight": self.weight, "eps": self.eps, "stage": self.stage}
