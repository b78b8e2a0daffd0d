"""``ickd``: Li Liu et al., ICCV 2021, "Exploring Inter-Channel Correlation for
Diversity-preserving Knowledge Distillation"; reference code: github.com/ADLab-AutoDrive/ICKD
(``Cifar100/distiller_zoo/ICKD.py``: ``ICKDLoss.batch_loss``, ``Embed``; its use in
``Cifar100/train_student.py`` and ``Cifar100/helper/loops.py``, weights in ``Cifar100/README.md``)."""
from __future__ import annotations

from typing import Collection, Iterable, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import register_method
from .adapters import COMMON_STAGES, checked_maps, is_auto, shared_taps, stage_names
from .base import Method
from .precision import full_precision, widen


class ChannelEmbed(nn.Sequential):
    """1x1 convolution (no bias) + BatchNorm: student channels -> teacher channels (the reference ``Embed``,
    PyTorch's default initialisation)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                         nn.BatchNorm2d(out_channels))


def channel_correlation(x: torch.Tensor) -> torch.Tensor:
    r"""N x C x C inter-channel correlation of an N x C x H x W (or N x C x HW) map, each row L2-normalised:
    :math:`\mathrm{normalize\_rows}(F F^\top)`, :math:`F` = C x HW per sample (``F.normalize``, eps 1e-12)."""
    f = x.flatten(2)
    return F.normalize(torch.bmm(f, f.transpose(1, 2)), dim=2)


def _row_products(fs: torch.Tensor, ft: torch.Tensor):
    r"""For each sample and channel i, :math:`|a_i|^2`, :math:`|b_i|^2` and :math:`a_i \cdot b_i` of the i-th rows
    :math:`a_i = F^S f^S_i`, :math:`b_i = F^T f^T_i` of the two C x C correlations, through the HW x HW products
    :math:`|a_i|^2 = {f^S_i}^\top ({F^S}^\top F^S) f^S_i`, :math:`a_i \cdot b_i = {f^S_i}^\top ({F^S}^\top F^T) f^T_i`
    (``fs``: N x C x HW_s, ``ft``: N x C x HW_t): N C HW^2 work instead of N C^2 HW, and no C x C tensor."""
    st = fs.transpose(1, 2)
    aa = (torch.bmm(fs, torch.bmm(st, fs)) * fs).sum(2)
    bb = (torch.bmm(ft, torch.bmm(ft.transpose(1, 2), ft)) * ft).sum(2)
    ab = (torch.bmm(fs, torch.bmm(st, ft)) * ft).sum(2)
    return aa, bb, ab


def ickd_loss(embedded_student: torch.Tensor, teacher_map: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Inter-channel correlation loss of one stage pair (reference ``batch_loss``):

    .. math::
        L_{ICKD} = \frac{1}{N C} \sum_{n} \left\lVert \mathrm{normalize\_rows}\big(F^S_n {F^S_n}^\top\big)
                   - \mathrm{normalize\_rows}\big(F^T_n {F^T_n}^\top\big) \right\rVert_F^2

    ``embedded_student``: the student map after its :class:`ChannelEmbed` (C = the teacher's channels).
    The C x C matrices do not depend on the spatial size, so maps of different sizes pair without pooling,
    as in the reference. Computed in the inputs' precision (float32 for half inputs); the teacher map
    is detached.

    When the maps are small against their channels (the default last stage: 7 x 7 or 4 x 4 maps of 512 channels),
    the same sum is taken row by row, :math:`\lVert a/m_a - b/m_b\rVert^2 = |a|^2/m_a^2 + |b|^2/m_b^2 - 2\,a\cdot
    b/(m_a m_b)` with :math:`m = \max(|\cdot|, \epsilon)` (``F.normalize``'s), from :func:`_row_products` in
    float64 (the difference of near-equal rows loses nothing at the inputs' precision): 7x less work at 7 x 7 and
    21x at 4 x 4 (C = 512), equal to the C x C form within float64 rounding (tested).
    """
    n, c = teacher_map.shape[:2]
    fs, ft = widen(embedded_student).flatten(2), widen(teacher_map.detach()).flatten(2)
    hs, ht = fs.shape[2], ft.shape[2]
    if hs * hs + ht * ht + hs * ht < c * (hs + ht):  # the HW x HW products cost less than the C x C ones
        aa, bb, ab = _row_products(fs.double(), ft.double())
        ma, mb = aa.clamp_min(eps * eps).sqrt(), bb.clamp_min(eps * eps).sqrt()
        rows = aa / (ma * ma) + bb / (mb * mb) - 2.0 * ab / (ma * mb)
        return (rows.sum() / (c * n)).to(fs.dtype)
    g_s, g_t = channel_correlation(fs), channel_correlation(ft)
    return (g_s - g_t).pow(2).sum() / (c * n)


@register_method("ickd")
class ICKD(Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * :math:`\sum_j` ``ickd_loss(embed_j(student[j]), teacher[j])``.

    ``stages``: ``auto`` (default) = the last stage tap both models have, once the trainer calls
    :meth:`select_taps` (``stage3`` before that): the reference's ``feat[-2]``, the last block's output
    of the last stage; or an explicit list (one embedding per stage, the terms add up). ``embed_j``
    (:class:`ChannelEmbed`, 1x1 conv + BN to the teacher's channels) is built in :meth:`setup`. The
    reference also builds an ``embed_t`` that its loss never uses; it is left out here.

    ``weight`` 2.5, CE weight 1, no KL term: the reference's "ICKD-C (w/o KL)" CIFAR-100 command
    (``-a 0 -b 2.5`` with the default ``-r 1``, in its README and ``scripts/run_cifar_distill.sh``; its
    ``train_student.sh`` has ``-b 4``); its "ICKD-C" adds the T = 4 KL term with weight 1 (``-a 1``):
    ``--method ickd+kd --opt kd.weight=1``.

    The authors' ImageNet code (torchdistill ``ChSimLoss`` with ``Student4ICKD``, config
    ``configs/sample/ilsvrc2012/ickd/resnet18_from_resnet34.yaml``) differs: a 3x3 conv + BN embedding, a
    loss divided by :math:`C N^2`, weight 500 next to a KD term; this method is the CIFAR-100 variant.
    """

    paper = "Liu et al. 2021"
    peers = frozenset({"torchdistill"})

    needs = frozenset(COMMON_STAGES[-1:])
    ce_weight = 1.0

    def __init__(self, weight: float = 2.5, stages: Union[str, Iterable[str]] = "auto"):
        super().__init__()
        self.weight = float(weight)
        self.auto = is_auto(stages)
        self.stages = COMMON_STAGES[-1:] if self.auto else stage_names(stages, "ickd.stages")
        self.needs = frozenset(self.stages)
        self.embeds = nn.ModuleList()

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: the last stage tap both models have."""
        if self.auto:
            self.stages = shared_taps("ickd", student_taps, teacher_taps)[-1:]
            self.needs = frozenset(self.stages)

    def setup(self, student_signals, teacher_signals):
        self.embeds = nn.ModuleList()
        for name in self.stages:
            s, t = checked_maps(student_signals, teacher_signals, name)
            self.embeds.append(ChannelEmbed(s.shape[1], t.shape[1]))

    def forward(self, student, teacher, labels, index=None):
        if len(self.embeds) != len(self.stages):
            raise RuntimeError("ickd: setup() must run before the first forward (it builds the embeddings)")
        total = 0.0
        for name, embed in zip(self.stages, self.embeds):
            s = embed(student[name].to(embed[0].weight.dtype))  # under --amp: in the step's precision
            with full_precision(s.device):
                total = total + ickd_loss(s, teacher[name])
        return {"ickd": self.weight * total}

    def options(self):
        return {"weight": self.weight, "stages": list(self.stages)}
