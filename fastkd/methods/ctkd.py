"""``ctkd``: Li et al., AAAI 2023, "Curriculum Temperature for Knowledge Distillation" (arXiv:2211.16231).

Authors Li, Li, Yang, Zhao, Song, Luo, Li & Yang; reference code github.com/zhengli97/CTKD (global
temperature: ``models/temp_global.py``, the schedule and options in ``train_student.py``, the loss in
``distiller_zoo/KD.py``, the CIFAR-100 command in ``scripts/run_cifar_distill.sh``)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError

from . import register_method
from .base import Method


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``scale`` (a negative ``scale``
    reverses it: Ganin & Lempitsky 2015's gradient reversal layer)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, with the gradient that flows back through it multiplied by ``scale``."""
    return _ScaleGradient.apply(x, float(scale))


def curriculum_lambda(epoch: int, lambda_max: float = 0.0, lambda_min: float = -1.0, loops: int = 10) -> float:
    r"""The reference's cosine curriculum (``CosineDecay.get_value``) at the 1-based ``epoch``:

    .. math::
        \lambda(e) = \lambda_{min} + (\lambda_{max} - \lambda_{min})\, \tfrac12 \big(1 + \cos(\pi e' / L)\big),
        \quad e' = \min(\max(e, 0), L)

    from ``lambda_max`` (0: the temperature is not trained) at e = 0 to ``lambda_min`` (-1: fully reversed)
    at e = L = ``loops``, constant after."""
    e = min(max(int(epoch), 0), int(loops))
    return lambda_min + (lambda_max - lambda_min) * 0.5 * (1.0 + math.cos(math.pi * e / loops))


def ctkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              temperature: torch.Tensor) -> torch.Tensor:
    r"""KD with a tensor temperature ``T`` (gradients reach it): :math:`T^2 \frac1N \sum_n
    \mathrm{KL}(\mathrm{softmax}(z_t/T) \Vert \mathrm{softmax}(z_s/T))` (the reference's ``DistillKL``:
    ``KLDivLoss(reduction='batchmean') * T * T``). Float32 for half-precision inputs, float64 for float64."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    z_s, z_t = student_logits.to(dtype), teacher_logits.detach().to(dtype)
    t = temperature.to(dtype)
    log_q = F.log_softmax(z_s / t, dim=1)
    log_p = F.log_softmax(z_t / t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean() * t * t


@register_method("ctkd")
class CTKD(Method):
    r"""KD at a learned global temperature trained adversarially; total loss = ``ce_weight`` * CE +
    ``weight`` * ``ctkd_loss(z_s, z_t, T)``, term ``ctkd``.

    .. math::
        T = t_{start} + t_{end}\, \sigma\big(\mathrm{GRL}_\lambda(\theta)\big),\quad \theta_0 = 1

    ``theta`` (the parameter ``global_t``, shape (1,), saved in the checkpoint with the method like an adapter,
    trained by the student's optimiser) is squashed by a sigmoid, so T stays in (t_start, t_start + t_end) =
    (1, 21) and starts at 1 + 20 sigmoid(1) = 15.62, as in the reference (``Global_T``: ``torch.ones(1)``;
    ``temp = t_start + t_end * sigmoid(temp)`` in ``helper/loops.py``).

    The gradient reversal layer GRL_lambda is the identity in the forward pass, so the loss value is plain KD at
    T; in the backward pass it multiplies the gradient reaching theta by lambda <= 0. The student still descends
    the KD loss, while theta receives lambda * dL/dtheta: with lambda < 0 the optimiser step moves theta *up*
    the loss, i.e. the temperature is set to make distillation harder (the paper's min-max game), and |lambda|
    sets how hard. lambda follows the reference's cosine curriculum (:func:`curriculum_lambda`) over
    ``decay_loops`` epochs from ``decay_max`` = 0 to ``decay_min`` = -1 (``scripts/run_cifar_distill.sh``:
    ``--cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10``; ImageNet uses 5), evaluated at the
    reference's 1-based epoch, i.e. ``epoch + 1`` for the 0-based epoch given to :meth:`set_epoch`: lambda =
    -0.024 in the first epoch and -1 from the 10th on. Before any :meth:`set_epoch` call lambda = ``decay_min``.

    Other defaults from the same script: ``-r 0.1 -a 0.9`` (CE weight 0.1, KD weight 0.9), ``--t_start 1
    --t_end 20`` (``train_student.py``'s defaults too). As there, theta shares the student's SGD settings,
    weight decay included (none with ``--no-bias-decay``, which spares 1-d tensors). The reference's linear
    schedule (``--cosine_decay 0``) and its instance-wise temperature are not implemented.
    """

    paper = "Li et al. 2023"
    peers = frozenset()  # neither mdistiller nor torchdistill ships it

    needs = frozenset({"logits"})
    ce_weight = 0.1

    def __init__(self, weight: float = 0.9, t_start: float = 1.0, t_end: float = 20.0, decay_max: float = 0.0,
                 decay_min: float = -1.0, decay_loops: int = 10):
        super().__init__()
        if not float(t_start) > 0:
            raise UserError(f"--opt ctkd.t_start={t_start!r} is the lowest temperature; give a value > 0")
        if not float(t_end) >= 0:
            raise UserError(f"--opt ctkd.t_end={t_end!r} is the temperature's range above t_start; "
                            "give a value >= 0")
        if int(decay_loops) < 1:
            raise UserError(f"--opt ctkd.decay_loops={decay_loops!r} is the curriculum's length in epochs; "
                            "give a value >= 1")
        self.weight, self.t_start, self.t_end = float(weight), float(t_start), float(t_end)
        self.decay_max, self.decay_min, self.decay_loops = float(decay_max), float(decay_min), int(decay_loops)
        self.global_t = nn.Parameter(torch.ones(1))
        self._epoch: Optional[int] = None

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch."""
        self._epoch = int(epoch)

    def grl_lambda(self) -> float:
        """The gradient reversal factor of the current epoch."""
        if self._epoch is None:
            return self.decay_min
        return curriculum_lambda(self._epoch + 1, self.decay_max, self.decay_min, self.decay_loops)

    def temperature(self, reverse: bool = False) -> torch.Tensor:
        """The current temperature (a 0-d tensor); with ``reverse`` its gradient to ``global_t`` is scaled by
        the epoch's lambda."""
        theta = scale_gradient(self.global_t, self.grl_lambda()) if reverse else self.global_t
        return self.t_start + self.t_end * torch.sigmoid(theta[0])

    def forward(self, student, teacher, labels, index=None):
        t = self.temperature(reverse=True)
        return {"ctkd": self.weight * ctkd_loss(student["logits"], teacher["logits"], t)}

    def options(self):
        return {"weight": self.weight, "t_start": self.t_start, "t_end": self.t_end, "decay_max": self.decay_max,
                "decay_min": self.decay_min, "decay_loops": self.decay_loops}
