"""``fitnets``: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (arXiv:1412.6550)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from fastkd.errors import UserError
from fastkd.tap_names import STAGE_TAPS

from . import register_method
from .adapters import ConvRegressor, check_map, match_spatial
from .base import Method


def fitnets_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    r"""Hint loss: mean squared error between the regressed guided map and the teacher's hint map.

    .. math::
        L_{HT} = \frac{1}{N C H W} \left\lVert r(v_g) - u_h \right\rVert_2^2

    ``regressed`` = :math:`r(v_g)`, the student's guided-layer map after the regressor (teacher
    channels); ``hint`` = :math:`u_h`. If the spatial sizes differ, the larger map is adaptive-average
    pooled to the smaller size first. The paper writes :math:`\frac12 \lVert\cdot\rVert^2` summed over
    the map; the mean over all N*C*H*W elements is the ``MSELoss`` normalisation of CRD / mdistiller
    that the weight 100 below refers to.
    """
    r, h = match_spatial(regressed.float(), hint.detach().float())
    return F.mse_loss(r, h)


@register_method("fitnets", "fitnet")
class FitNets(Method):
    """Total loss = ``ce_weight`` * CE + ``weight`` * ``fitnets_loss(regressor(student[guided]), teacher[hint])``.

    ``hint`` (teacher tap) and ``guided`` (student tap) default to ``stage2``: the paper takes the
    middle layer of each network, ``stage2`` is the middle stage of the 3-stage families (``resnet32``,
    SqueezeNet; CRD / mdistiller's ``hint_layer = 2``) and exists in every family. The regressor
    (:class:`~fastkd.methods.adapters.ConvRegressor`, conv3x3 + BN) is built in :meth:`setup` from
    the channel counts. Weight 100, CE weight 1: the one-stage setting of CRD / mdistiller (CIFAR-100).

    ``stage1_epochs`` > 0 selects the paper's two-stage schedule: during epochs
    ``0 .. stage1_epochs-1`` (told by :meth:`set_epoch`) :attr:`exclusive` is True and the trainer
    must optimise this hint loss alone (no CE, no other method), which trains the student up to the
    guided layer plus the regressor (later layers get no gradient); afterwards this method emits
    nothing and the paper's stage 2 is whatever it is combined with (``--method fitnets+kd``).
    """

    paper = "Romero et al. 2015"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset({"stage2"})
    ce_weight = 1.0

    def __init__(self, weight: float = 100.0, hint: str = "stage2", guided: str = "stage2",
                 stage1_epochs: int = 0):
        super().__init__()
        for option, tap in (("hint", hint), ("guided", guided)):
            if tap not in STAGE_TAPS:
                raise UserError(f"fitnets.{option}={tap!r}: expected one of {', '.join(STAGE_TAPS)}")
        if int(stage1_epochs) < 0:
            raise UserError(f"fitnets.stage1_epochs must be >= 0, got {stage1_epochs}")
        self.weight, self.hint, self.guided = float(weight), hint, guided
        self.stage1_epochs = int(stage1_epochs)
        self.needs = frozenset({hint, guided})
        self.regressor: Optional[ConvRegressor] = None
        self._epoch: Optional[int] = None

    def setup(self, student_signals, teacher_signals):
        s, t = student_signals[self.guided], teacher_signals[self.hint]
        check_map(s, f"student tap {self.guided}")
        check_map(t, f"teacher tap {self.hint}")
        self.regressor = ConvRegressor(s.shape[1], t.shape[1])

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch."""
        self._epoch = int(epoch)

    def has_stages(self) -> bool:
        return self.stage1_epochs > 0

    @property
    def exclusive(self) -> bool:
        """True during the paper's stage 1 (hint training): the step's loss must be this method's alone."""
        return self._epoch is not None and self._epoch < self.stage1_epochs

    def forward(self, student, teacher, labels, index=None):
        if self.regressor is None:
            raise RuntimeError("fitnets: setup() must run before the first forward (it builds the regressor)")
        if self.stage1_epochs > 0:
            if self._epoch is None:
                raise UserError("fitnets.stage1_epochs > 0 needs a trainer that calls set_epoch(); "
                                "use fitnets.stage1_epochs=0 (one-stage FitNets)")
            if not self.exclusive:
                return {}
        regressed = self.regressor(student[self.guided])
        return {"fitnets": self.weight * fitnets_loss(regressed, teacher[self.hint])}

    def options(self):
        return {"weight": self.weight, "hint": self.hint, "guided": self.guided,
                "stage1_epochs": self.stage1_epochs}
