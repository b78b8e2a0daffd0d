"""``reviewkd``: Chen, Liu, Zhao & Jia, CVPR 2021, "Distilling Knowledge via Knowledge Review" (arXiv:2104.09044);
reference code github.com/dvlab-research/ReviewKD, mdistiller ``mdistiller/distillers/ReviewKD.py`` (its
``REVIEWKD`` section of ``mdistiller/engine/cfg.py`` and ``configs/cifar100/reviewkd.yaml``) and torchdistill's
``HierarchicalContextLoss`` with ``AttentionBasedFusion``
(``configs/sample/ilsvrc2012/kr/resnet18_from_resnet34.yaml``)."""
from __future__ import annotations

from typing import Collection, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError
from fastkd.tap_names import EMBEDDING, STAGE_TAPS, pre

from . import register_method
from .adapters import COMMON_STAGES, check_option, checked_maps, is_auto, stage_names
from .base import Method
from .dkd import LinearWarmup
from .precision import full_precision, widen

#: The context levels of the hierarchical context loss: each map is also compared average-pooled to l x l.
HCL_LEVELS: Tuple[int, ...] = (4, 2, 1)
TAP_KINDS = ("pre", "stage")


def hcl_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Hierarchical context loss: for each level pair, the MSE of the maps and of their average-pooled
    ``l x l`` versions (l = 4, 2, 1, each only where l < H), weighted 1, 1/2, 1/4, ... and normalised by
    the sum of the weights used; the levels add up:

    .. math::
        L_{HCL} = \sum_{i} \frac{\mathrm{MSE}(F^S_i, F^T_i) + \sum_{k} 2^{-k}\,
                  \mathrm{MSE}\big(P_{l_k}(F^S_i), P_{l_k}(F^T_i)\big)}{1 + \sum_k 2^{-k}}

    (MSE = mean over all N*C*h*w elements; :math:`P_l` = adaptive average pooling to l x l; :math:`l_k`
    the k-th of 4, 2, 1 below the map's height H). A 1 x 1 level (the pooled embedding) is one MSE.
    Computed in the inputs' precision (float32 for half inputs); the teacher maps are detached.
    """
    total = 0.0
    for fs, ft in zip(students, teachers):
        fs, ft = widen(fs), widen(ft.detach())
        h = fs.shape[2]
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= h:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion of one student level with the residual from the deeper levels (paper fig. 3).

    ``x`` -> 1x1 conv (no bias) + BN to ``mid`` channels; with ``fuse``, the residual is resized (nearest) to
    ``x``'s size and the two are mixed by a 2-channel sigmoid attention from a 1x1 conv (with bias) of their
    concatenation: ``x * a0 + residual * a1``; the result, resized (nearest) to the teacher level's size, is the
    residual handed to the next (shallower) level, and its 3x3 conv (no bias) + BN to the teacher's channels is
    compared with the teacher. Conv weights Kaiming-uniform with a = 1, as in the reference.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.out = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor], size) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            a = self.attention(torch.cat([x, residual], dim=1))
            x = x * a[:, :1] + residual * a[:, 1:]
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.out(x), x


@register_method("reviewkd", "review", "hcl")
class ReviewKD(LinearWarmup, Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * w(epoch) * ``hcl_loss(ABF outputs, teacher levels)``.

    **Levels**: the stages (shallow to deep) and, as the deepest level, ``embedding`` (the pooled features, as
    1 x 1 maps: mdistiller's ``pooled_feat``). ``taps`` = ``pre`` (default) reads each stage's pre-activation
    ``preK`` (the input of its final ReLU) on both networks: the teacher side of every reference (mdistiller
    ``preact_feats``, torchdistill ``layerK.-1.relu`` inputs) and the student side of mdistiller's ImageNet configs
    and torchdistill; mdistiller's CIFAR-100 config reads the student's post-ReLU outputs (``STU_PREACT: False``),
    which a tap name serving both networks cannot express (``taps=stage`` reads ``stageK`` on both).
    ``stages``: ``auto`` (default) = every stage both models have, once the trainer calls :meth:`select_taps`
    (``1..3`` before that); or an explicit list of ``stageK`` names.

    **Review path** (:class:`ABF`, built in :meth:`setup`): starting from the embedding, each level's student map is
    fused with the residual of the deeper levels; level i's output is resized to the teacher level's size and has
    its channels. ``mid`` channels = min(``max_mid_channels``, the student's embedding width): the reference's
    ``min(512, in_channels[-1])`` (mdistiller's ``MAX_MID_CHANNEL`` option is read by none of its code).

    **Defaults**: ``weight`` 5, CE weight 1, ``warmup`` 20: mdistiller's CIFAR-100 ``configs/cifar100/reviewkd.yaml``
    (``REVIEWKD_WEIGHT: 5.0``; ``CE_WEIGHT`` 1 and ``WARMUP_EPOCHS`` 20 from its cfg), the ReviewKD authors' CIFAR
    setting. w(epoch) = min((epoch + 1) / ``warmup``, 1) for the 0-based epoch given to :meth:`set_epoch`: the
    reference's ``min(epoch / warmup_epochs, 1)`` with its 1-based epoch (1/20 in the first epoch). Before any
    :meth:`set_epoch` call w = 1; ``warmup=0`` disables the ramp. ImageNet (mdistiller ``r34_r18``): ``weight=1
    warmup=1``; torchdistill has no warm-up.
    """

    paper = "Chen et al. 2021"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset({pre(k) for k in range(1, len(COMMON_STAGES) + 1)} | {EMBEDDING})
    ce_weight = 1.0

    def __init__(self, weight: float = 5.0, warmup: int = 20, taps: str = "pre",
                 stages: Union[str, Iterable[str]] = "auto", max_mid_channels: int = 512):
        super().__init__()
        check_option(int(warmup) >= 0, "reviewkd", "warmup", warmup, "must be >= 0 epochs")
        check_option(taps in TAP_KINDS, "reviewkd", "taps", taps, f"must be one of {', '.join(TAP_KINDS)}")
        check_option(int(max_mid_channels) >= 1, "reviewkd", "max_mid_channels", max_mid_channels, "must be >= 1")
        self.weight, self.warmup, self.taps = float(weight), int(warmup), taps
        self.max_mid_channels = int(max_mid_channels)
        self.auto = is_auto(stages)
        self._use(COMMON_STAGES if self.auto else stage_names(stages, "reviewkd.stages"))
        self.abfs = nn.ModuleList()
        self._epoch: Optional[int] = None

    def _tap(self, stage: str) -> str:
        """``stageK`` -> the tap read at that stage: ``preK`` or ``stageK``."""
        return pre(stage[len("stage"):]) if self.taps == "pre" else stage

    def _use(self, stages: Sequence[str]) -> None:
        self.stages = tuple(stages)
        self.levels: Tuple[str, ...] = tuple(self._tap(s) for s in stages)
        self.needs = frozenset(self.levels + (EMBEDDING,))

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: every stage whose tap (of the ``taps`` kind) both models have."""
        if not self.auto:
            return
        self._use([s for s in STAGE_TAPS if self._tap(s) in student_taps and self._tap(s) in teacher_taps])
        if not self.levels or EMBEDDING not in student_taps or EMBEDDING not in teacher_taps:
            raise UserError(f"reviewkd needs {self.taps}K stage taps and the embedding that both models have; "
                            "these two have none in common")

    def setup(self, student_signals, teacher_signals):
        for name in self.levels:
            checked_maps(student_signals, teacher_signals, name)
        s_channels = [student_signals[n].shape[1] for n in self.levels] + [student_signals[EMBEDDING][0].numel()]
        t_channels = [teacher_signals[n].shape[1] for n in self.levels] + [teacher_signals[EMBEDDING][0].numel()]
        mid = min(self.max_mid_channels, s_channels[-1])
        last = len(s_channels) - 1
        self.abfs = nn.ModuleList(ABF(c_in, mid, c_out, i < last)
                                  for i, (c_in, c_out) in enumerate(zip(s_channels, t_channels)))

    def forward(self, student, teacher, labels, index=None):
        if len(self.abfs) != len(self.levels) + 1:
            raise RuntimeError("reviewkd: setup() must run before the first forward (it builds the ABF modules)")
        dtype = self.abfs[0].reduce[0].weight.dtype  # under --amp: the step's precision (autocast)
        s_maps = [student[n] for n in self.levels] + [student[EMBEDDING].reshape(len(student[EMBEDDING]), -1, 1, 1)]
        t_maps = [teacher[n] for n in self.levels] + [teacher[EMBEDDING].reshape(len(teacher[EMBEDDING]), -1, 1, 1)]
        outs: List[torch.Tensor] = [None] * len(s_maps)
        residual = None
        for i in reversed(range(len(s_maps))):  # the deepest level (the embedding) first
            outs[i], residual = self.abfs[i](s_maps[i].to(dtype), residual, t_maps[i].shape[-2:])
        with full_precision(outs[0].device):
            loss = hcl_loss(outs, t_maps)
        return {"reviewkd": self.weight * self.warmup_factor() * loss}

    def options(self):
        return {"weight": self.weight, "warmup": self.warmup, "taps": self.taps, "stages": list(self.stages),
                "max_mid_channels": self.max_mid_channels}
