"""``overhaul``: Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019, "A Comprehensive Overhaul of Feature
Distillation" (arXiv:1904.01866); reference code github.com/clovaai/overhaul-distillation."""
from __future__ import annotations

import math
from typing import Collection, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.ranks import mean_over_ranks
from fastkd.tap_names import COMMON_DEPTH, PRE_TAPS, pre, stats

from . import register_method
from .adapters import checked_maps, is_auto, match_spatial
from .base import Method

#: The pre-activation taps every model family has (``resnet32`` and SqueezeNet stop at ``pre3``).
COMMON_PRE: Tuple[str, ...] = PRE_TAPS[:COMMON_DEPTH]
#: Below this probability of a negative response the margin is -3 std (the reference's guard).
MIN_NEGATIVE_MASS = 1e-3


def margin_from_stats(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    r"""Per-channel margin :math:`m = E[x \mid x < 0]` for :math:`x \sim N(\mu, \sigma^2)` (paper eq. 3):

    .. math::
        m = \mu - \sigma \, \frac{\phi(\mu/\sigma)}{\Phi(-\mu/\sigma)}

    with :math:`\phi`, :math:`\Phi` the standard normal density and distribution. Where
    :math:`\Phi(-\mu/\sigma) \le 10^{-3}` (almost no negative responses; the ratio is numerically
    unstable) the margin is :math:`-3\sigma`, as in the reference code. ``std`` is taken in absolute
    value (a BatchNorm's gamma may be negative); a zero std gives :math:`\mu` if :math:`\mu < 0`, else 0.
    Computed in float64, returned in float32.
    """
    mu, sigma = mean.double(), std.double().abs()
    z = torch.nan_to_num(mu / sigma, nan=0.0, posinf=math.inf, neginf=-math.inf)
    mass = torch.special.ndtr(-z)  # P(x < 0)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    exact = mu - sigma * pdf / mass.clamp_min(MIN_NEGATIVE_MASS)
    return torch.where(mass > MIN_NEGATIVE_MASS, exact, -3.0 * sigma).float()


def partial_l2(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Partial L2 distance (paper eq. 5), summed over every element:

    .. math::
        d_p(T, S) = \sum_i \begin{cases} 0 & S_i \le T_i \le 0 \\ (T_i - S_i)^2 & \text{otherwise} \end{cases}

    ``target`` is the teacher's margin-ReLU'd map: where the teacher is negative (inactive after its
    ReLU) a student response below it is not penalised.
    """
    skip = (source <= target) & (target <= 0)
    return (source - target).pow(2).masked_fill(skip, 0.0).sum()


def pre_names(value: Union[str, Iterable[str]], option: str) -> Tuple[str, ...]:
    """``"pre1,pre3"`` / ``"1+3"`` / ``["stage1", "stage3"]`` -> ``("pre1", "pre3")``, sorted by stage."""
    if isinstance(value, str):
        value = value.replace("+", ",").split(",")
    names = []
    for v in value:
        v = str(v).strip()
        if not v:
            continue
        for prefix in ("pre", "stage"):
            if v.startswith(prefix):
                v = v[len(prefix):]
        names.append(pre(v))
    bad = [n for n in names if n not in PRE_TAPS]
    if bad or not names:
        raise UserError(f"option {option}={value!r}: expected stages among {', '.join(PRE_TAPS)} "
                        "(or 1..4, stage1..stage4), or 'auto'")
    return tuple(sorted(set(names), key=PRE_TAPS.index))


def _needs(stages: Iterable[str]) -> frozenset:
    return frozenset(n for s in stages for n in (s, stats(s)))


def _forget_ready(module: "Overhaul", incompatible_keys) -> None:
    module._ready = None  # re-read margins_ready: a checkpoint brings its margins


class Connector(nn.Sequential):
    """1x1 convolution (no bias) + BatchNorm: student channels -> teacher channels (paper section 3.3).

    Init as the reference: conv weights N(0, 2 / (k*k*out_channels)) (Kaiming fan-out), BN weight 1,
    bias 0.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                         nn.BatchNorm2d(out_channels))
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


@register_method("overhaul", "ofd")
class Overhaul(Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * ``scale`` / N *
    :math:`\sum_{i=1}^{n} 2^{-(n-i)}\, d_p\big(\sigma_m(T_i),\, r_i(S_i)\big)`.

    **Positions** (``needs``): the pre-ReLU responses at the end of each stage, the model families'
    pre-activation taps ``preK`` (:mod:`fastkd.models.preact`: the input of the stage's final ReLU;
    MobileNetV2's linear stage outputs; half the channels of a ShuffleNetV2 stage, the unit's own
    branch; SqueezeNet's concatenated expand convs), with their statistics ``preK_stats``. Student stage
    i is paired with teacher stage i; a later stage weighs twice the one before (``1/2^(n-i)``, the last
    one 1). ``stages``: ``auto`` (default) = every stage both models have once the trainer calls
    :meth:`select_taps` with the pair's taps, else ``pre1,pre2,pre3`` (the stages all families have);
    or an explicit list such as ``pre1,pre2,pre3,pre4`` (``1,2,3,4`` works too).

    **Teacher transform**: margin ReLU :math:`\sigma_m(x) = \max(x, m)` per channel with
    :math:`m = E[x \mid x < 0]` (:func:`margin_from_stats`) for the Gaussian of ``preK_stats``: the
    preceding BatchNorm's :math:`(\beta, |\gamma|)`. As in the reference, a residual sum uses the last
    BN of the block (the identity branch is ignored). Where no BN precedes (SqueezeNet) the stats are
    the per-channel mean and std of the teacher's pre-activation over the batch. Margins are fixed at
    the first call of :meth:`forward` (the first training batch: the trainer's dry forward in
    :meth:`setup` runs on zeros, useless for batch moments; BN-derived margins are constants of the
    frozen teacher anyway) and kept in buffers saved with the checkpoint; in a distributed run the
    statistics are averaged over the ranks first. The margin is applied to every position,
    MobileNetV2's linear outputs (no ReLU follows in the teacher) included.

    **Student transform**: :class:`Connector` (1x1 conv + BN) to the teacher's channels, built in
    :meth:`setup`. If the spatial sizes differ, the larger map (the student's after its connector, or
    the teacher's before its margin ReLU) is adaptive-average pooled to the smaller one.

    **Distance**: :func:`partial_l2`, summed over elements, divided by the batch size N and multiplied
    by ``scale`` = 1e-3, the reference's CIFAR-100 setting (``loss_distill / batch_size / 1000``); its
    ImageNet setting is ``scale=1e-4`` (``--opt overhaul.scale=1e-4``). ``weight`` = 1, CE weight 1.

    Departure from the reference: its teacher ran in train mode (BatchNorm on batch statistics), the
    trainer's teacher is in eval mode (running statistics), so a teacher BN's output follows
    N(beta, gamma^2) only as far as its running statistics match the data.
    """

    paper = "Heo et al. 2019"
    peers = frozenset({"mdistiller"})

    needs = _needs(COMMON_PRE)
    ce_weight = 1.0

    def __init__(self, weight: float = 1.0, scale: float = 1e-3, stages: Union[str, Iterable[str]] = "auto"):
        super().__init__()
        self.weight, self.scale = float(weight), float(scale)
        self.auto = is_auto(stages)
        self.stages: Tuple[str, ...] = COMMON_PRE if self.auto else pre_names(stages, "overhaul.stages")
        self.needs = _needs(self.stages)
        self.connectors = nn.ModuleList()
        self.register_buffer("margins_ready", torch.tensor(False))
        self._ready: Optional[bool] = None  # cached margins_ready (no device sync per step)
        self.register_load_state_dict_post_hook(_forget_ready)

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: use every ``preK`` both models have (call before building signals)."""
        if not self.auto:
            return
        both = [s for s in PRE_TAPS if all(n in student_taps and n in teacher_taps for n in _needs([s]))]
        if not both:
            raise UserError("overhaul needs pre-activation taps (pre1..pre4) that both models have; "
                            "these two have none in common")
        self.stages = tuple(both)
        self.needs = _needs(self.stages)

    def setup(self, student_signals, teacher_signals):
        self.connectors = nn.ModuleList()
        for name in self.stages:
            s, t = checked_maps(student_signals, teacher_signals, name)
            self.connectors.append(Connector(s.shape[1], t.shape[1]))
            self.register_buffer(f"margin_{name}", torch.zeros(t.shape[1]))
        self.margins_ready.fill_(False)
        self._ready = False

    def _margins(self, teacher) -> List[torch.Tensor]:
        if self._ready is None:
            self._ready = bool(self.margins_ready)
        if not self._ready:
            for name in self.stages:
                gauss = mean_over_ranks(teacher[stats(name)].detach().float())
                getattr(self, f"margin_{name}").copy_(margin_from_stats(gauss[0], gauss[1]))
            self.margins_ready.fill_(True)
            self._ready = True
        return [getattr(self, f"margin_{name}") for name in self.stages]

    def forward(self, student, teacher, labels, index=None):
        if len(self.connectors) != len(self.stages):
            raise RuntimeError("overhaul: setup() must run before the first forward (it builds the connectors)")
        margins = self._margins(teacher)
        n, total = len(self.stages), 0.0
        for i, (name, connector, margin) in enumerate(zip(self.stages, self.connectors, margins)):
            s, t = match_spatial(connector(student[name]).float(), teacher[name].detach().float())
            t = torch.maximum(t, margin.view(1, -1, 1, 1))
            total = total + partial_l2(s, t) / 2 ** (n - i - 1)
        batch = student[self.stages[0]].shape[0]
        return {"overhaul": self.weight * self.scale * total / batch}

    def options(self):
        return {"weight": self.weight, "scale": self.scale, "stages": list(self.stages)}
