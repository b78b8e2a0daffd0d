"""``vid``: Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019, "Variational Information Distillation for Knowledge
Transfer" (arXiv:1904.05835); reference code github.com/ssahn0215/variational-information-distillation, as
ported to mdistiller ``mdistiller/distillers/VID.py`` (``vid_loss``, defaults in ``mdistiller/engine/cfg.py``
``CFG.VID``) and torchdistill ``VIDLoss`` with ``Regressor4VID`` (``torchdistill/models/wrapper.py``)."""
from __future__ import annotations

import math
from typing import Collection, Iterable, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import register_method
from .adapters import COMMON_STAGES, check_option, checked_maps, is_auto, match_spatial, shared_taps, stage_names
from .base import Method
from .precision import full_precision, widen


class VIDHead(nn.Module):
    """One stage's variational distribution :math:`q(t \\mid s) = N(\\mu(s), \\sigma^2)`: the mean regressor
    ``mean`` = conv1x1 - ReLU - conv1x1 - ReLU - conv1x1 (no biases, student channels -> teacher channels, the
    middle width the teacher's, PyTorch's default initialisation) and one learned variance per teacher channel,
    :math:`\\sigma_c^2 = \\mathrm{softplus}(\\alpha_c) + \\epsilon`, with ``log_scale`` :math:`\\alpha` initialised
    to :math:`\\log(e^{v_0 - \\epsilon} - 1)` so that :math:`\\sigma^2 = v_0` = ``init_pred_var`` at the start."""

    def __init__(self, in_channels: int, out_channels: int, init_pred_var: float, eps: float):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False))
        self.log_scale = nn.Parameter(torch.full((out_channels,), math.log(math.expm1(init_pred_var - eps))))


def vid_loss(pred_mean: torch.Tensor, teacher_map: torch.Tensor, log_scale: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Negative log-likelihood of the teacher map under the student's Gaussian (paper eq. 6, constants dropped),
    averaged over every element (mdistiller ``vid_loss``, torchdistill ``VIDLoss``):

    .. math::
        L_{VID} = \frac{1}{N C H W} \sum_{n,c,h,w} \frac12 \left( \frac{(\mu_{nchw}(s) - t_{nchw})^2}{\sigma_c^2}
                  + \log \sigma_c^2 \right), \qquad \sigma_c^2 = \log(1 + e^{\alpha_c}) + \epsilon

    ``pred_mean``: the regressor's output on the student map (already pooled to the teacher's size if larger);
    ``teacher_map``: the same size (detached here). Computed in the inputs' precision, float32 for half inputs.
    """
    mean, target = widen(pred_mean), widen(teacher_map.detach())
    var = (F.softplus(log_scale.to(mean.dtype)) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target).pow(2) / var + var.log())).mean()


@register_method("vid")
class VID(Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * :math:`\sum_j` ``vid_loss(mean_j(student[j]), teacher[j])``.

    ``stages``: ``auto`` (default) = every stage tap both models have, once the trainer calls
    :meth:`select_taps` (``stage1,stage2,stage3`` before that): mdistiller's ``feats[1:]``, the output of every
    stage (3 for its CIFAR ResNets, 4 for torchdistill's ImageNet ``layer1..layer4`` config); or an explicit list.
    One :class:`VIDHead` per stage, built in :meth:`setup`. If the spatial sizes differ, the larger map is
    adaptive-average pooled to the smaller one *before* the regressor, as in mdistiller.

    Defaults (mdistiller ``CFG.VID``, the same in torchdistill's ``resnet18_from_resnet50.yaml``):
    ``init_pred_var`` 5.0, ``eps`` 1e-5, ``weight`` 1 (``LOSS.FEAT_WEIGHT``), CE weight 1 (``LOSS.CE_WEIGHT``).

    Departure from mdistiller: its per-channel ``log_scales`` sit in a plain Python list, so its optimiser never
    updates them and the variance stays at ``init_pred_var``; here, as in the paper, the authors' code (whose
    ``VIDLoss`` RepDistiller copies) and torchdistill's ``Regressor4VID``, the variance is learned with the student.
    """

    paper = "Ahn et al. 2019"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset(COMMON_STAGES)
    ce_weight = 1.0

    def __init__(self, weight: float = 1.0, init_pred_var: float = 5.0, eps: float = 1e-5,
                 stages: Union[str, Iterable[str]] = "auto"):
        super().__init__()
        check_option(float(eps) > 0, "vid", "eps", eps, "must be > 0 (the variance floor)")
        check_option(float(init_pred_var) > float(eps), "vid", "init_pred_var", init_pred_var,
                     f"must be > vid.eps = {eps} (the initial variance)")
        self.weight, self.init_pred_var, self.eps = float(weight), float(init_pred_var), float(eps)
        self.auto = is_auto(stages)
        self.stages = COMMON_STAGES if self.auto else stage_names(stages, "vid.stages")
        self.needs = frozenset(self.stages)
        self.heads = nn.ModuleList()

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: every stage tap both models have."""
        if self.auto:
            self.stages = shared_taps("vid", student_taps, teacher_taps)
            self.needs = frozenset(self.stages)

    def setup(self, student_signals, teacher_signals):
        self.heads = nn.ModuleList()
        for name in self.stages:
            s, t = checked_maps(student_signals, teacher_signals, name)
            self.heads.append(VIDHead(s.shape[1], t.shape[1], self.init_pred_var, self.eps))

    def forward(self, student, teacher, labels, index=None):
        if len(self.heads) != len(self.stages):
            raise RuntimeError("vid: setup() must run before the first forward (it builds the regressors)")
        total = 0.0
        for name, head in zip(self.stages, self.heads):
            s, t = match_spatial(student[name].to(head.log_scale.dtype), widen(teacher[name].detach()))
            mean = head.mean(s)  # under --amp: in the step's precision
            with full_precision(mean.device):
                total = total + vid_loss(mean, t, head.log_scale, self.eps)
        return {"vid": self.weight * total}

    def options(self):
        return {"weight": self.weight, "init_pred_var": self.init_pred_var, "eps": self.eps,
                "stages": list(self.stages)}
