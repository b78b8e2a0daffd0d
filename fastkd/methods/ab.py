"""``ab``: Heo, Lee, Yun & Choi, AAAI 2019, "Knowledge Transfer via Distillation of Activation Boundaries Formed
by Hidden Neurons" (arXiv:1811.03233). Reference code: the authors' github.com/bhheo/AB_distillation
(``cifar10_AB_distillation.py``: ``criterion_alternative_L2`` and its stage weights; ``models/distillation_module.py``:
connectors and the pre-ReLU positions) and torchdistill's ``AltActTransferLoss``
(``torchdistill/losses/mid_level.py``, config ``configs/sample/ilsvrc2012/dab/resnet18_from_resnet50.yaml``)."""
from __future__ import annotations

from typing import Collection, Iterable, Optional, Union

import torch
from torch import nn

from fastkd.tap_names import PRE_TAPS

from . import register_method
from .adapters import check_option, checked_maps, is_auto, match_spatial, shared_taps
from .base import Method
from .overhaul import COMMON_PRE, Connector, pre_names
from .precision import full_precision, widen


def alt_act_transfer(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    r"""The alternative activation transfer loss of one position (paper eq. 6, reference
    ``criterion_alternative_L2``), summed over every element:

    .. math::
        \sum_i \big(s_i + \mu\big)^2 \, [s_i > -\mu]\,[t_i \le 0] + \big(s_i - \mu\big)^2 \, [s_i \le \mu]\,[t_i > 0]

    ``source`` :math:`s`: the student's pre-ReLU map after its connector; ``target`` :math:`t`: the teacher's
    pre-ReLU map (only its sign, the neuron's activation, matters), detached; margin :math:`\mu`. A neuron the
    teacher keeps inactive must sit below :math:`-\mu` in the student, an active one above :math:`+\mu`
    (a squared hinge). If the spatial sizes differ, the larger map is adaptive-average pooled to the smaller one.
    """
    s, t = match_spatial(widen(source), widen(target.detach()))
    below = (s + margin).pow(2) * ((s > -margin) & (t <= 0))
    above = (s - margin).pow(2) * ((s <= margin) & (t > 0))
    return (below + above).sum()


@register_method("ab", "alt_act_transfer", "abkd")
class AB(Method):
    r"""AB loss = ``weight`` * ``scale`` / N * :math:`\sum_{i=1}^{n} 2^{-(n-i)}`
    ``alt_act_transfer(connector_i(student[pre_i]), teacher[pre_i], margin)``; term ``ab``.

    **Schedule** (:meth:`set_epoch`): the paper's initialisation stage, epochs ``0 .. init_epochs-1``, is
    :attr:`exclusive`: this loss alone trains the student (up to its last position) and the connectors. Later
    epochs this method emits nothing: the student then trains with CE (CE weight 1), as torchdistill's stage 2
    (its ``KDLoss`` with ``alpha: 1`` is cross-entropy alone) and the authors' ``KD = False`` path. The authors'
    CIFAR-10 script trains with KD alone instead (T = 3, no :math:`T^2` factor, no CE): ``--method ab+kd
    --ce-weight 0 --opt kd.temperature=3 --opt kd.weight=0.1111``. ``init_epochs=0``: no stage, this loss is
    added to CE every epoch (a one-stage variant, not the paper's). Before any :meth:`set_epoch` the loss is
    returned at every call.

    **Positions** (``stages``): the pre-ReLU responses at the end of each stage, the models' ``preK`` taps (the
    input of the stage's final activation, as the authors' ``Active_Soft_WRN_norelu``; torchdistill's config
    reads the stage outputs after the ReLU, which have the same teacher signs). ``auto`` (default) = every
    ``preK`` both models have once the trainer calls :meth:`select_taps` (``pre1,pre2,pre3`` before that), or an
    explicit list (``1,2,3`` works too). Student position i pairs with teacher position i; a later position
    weighs twice the one before, the last one 1 (the authors' 1/4, 1/2, 1 on CIFAR, 1/8 .. 1 with four;
    torchdistill's config weighs all four 1).

    **Connectors**: :class:`~fastkd.methods.overhaul.Connector` (1x1 conv + BN, Kaiming fan-out init, BN 1/0)
    from the student's channels to the teacher's, built in :meth:`setup`, trained in the initialisation stage
    and frozen (``requires_grad`` False) after it, when the loss is no longer used. The authors omit them where
    the channel counts are equal; here there is always one.

    Defaults: ``margin`` 1, ``scale`` 1e-3 and ``weight`` 3 with the sum divided by the batch size (the authors'
    CIFAR ``loss_alter / 1000 * 3``; their ImageNet-teacher code has ``weight`` 1; torchdistill's has neither
    factor), ``init_epochs`` 1 (torchdistill's stage 1 and the authors' ``distill_epoch``).
    """

    paper = "Heo et al. 2019"
    peers = frozenset({"torchdistill"})

    needs = frozenset(COMMON_PRE)
    ce_weight = 1.0

    def __init__(self, weight: float = 3.0, scale: float = 1e-3, margin: float = 1.0, init_epochs: int = 1,
                 stages: Union[str, Iterable[str]] = "auto"):
        super().__init__()
        check_option(float(margin) >= 0, "ab", "margin", margin, "must be >= 0")
        check_option(int(init_epochs) >= 0, "ab", "init_epochs", init_epochs,
                     "must be >= 0 (0: no initialisation stage)")
        self.weight, self.scale, self.margin = float(weight), float(scale), float(margin)
        self.init_epochs = int(init_epochs)
        self.auto = is_auto(stages)
        self.stages = COMMON_PRE if self.auto else pre_names(stages, "ab.stages")
        self.needs = frozenset(self.stages)
        self.connectors = nn.ModuleList()
        self._epoch: Optional[int] = None

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: every ``preK`` both models have."""
        if self.auto:
            self.stages = shared_taps("ab", student_taps, teacher_taps, PRE_TAPS)
            self.needs = frozenset(self.stages)

    def setup(self, student_signals, teacher_signals):
        self.connectors = nn.ModuleList()
        for name in self.stages:
            s, t = checked_maps(student_signals, teacher_signals, name)
            self.connectors.append(Connector(s.shape[1], t.shape[1]))
        self.connectors.requires_grad_(self._active())

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch."""
        self._epoch = int(epoch)
        self.connectors.requires_grad_(self._active())

    def has_stages(self) -> bool:
        return self.init_epochs > 0

    @property
    def exclusive(self) -> bool:
        """True during the initialisation stage: the AB loss is the step's whole loss."""
        return self._epoch is not None and self._epoch < self.init_epochs

    def _active(self) -> bool:
        return self.init_epochs == 0 or self._epoch is None or self.exclusive

    def forward(self, student, teacher, labels, index=None):
        if len(self.connectors) != len(self.stages):
            raise RuntimeError("ab: setup() must run before the first forward (it builds the connectors)")
        if not self._active():
            return {}
        n, total = len(self.stages), 0.0
        for i, (name, connector) in enumerate(zip(self.stages, self.connectors)):
            s = connector(student[name].to(connector[0].weight.dtype))  # under --amp: in the step's precision
            with full_precision(s.device):
                total = total + alt_act_transfer(s, teacher[name], self.margin) / 2 ** (n - 1 - i)
        batch = student[self.stages[0]].shape[0]
        return {"ab": self.weight * self.scale * total / batch}

    def options(self):
        return {"weight": self.weight, "scale": self.scale, "margin": self.margin, "init_epochs": self.init_epochs,
                "stages": list(self.stages)}
