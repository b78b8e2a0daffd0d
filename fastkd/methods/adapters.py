"""Pieces shared by the methods: per-step random state, option checks, tap-name options and their ``auto``
choice, spatial matching, the regressor."""
from __future__ import annotations

from typing import Collection, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError
from fastkd.tap_names import COMMON_DEPTH, STAGE_TAPS

#: The stage taps every model family has (``resnet32`` and SqueezeNet stop at ``stage3``).
COMMON_STAGES: Tuple[str, ...] = STAGE_TAPS[:COMMON_DEPTH]


class SeededSteps:
    """Mixin of a method that draws random numbers at each step from :func:`~fastkd.methods.crd.stream_seed`
    (CRD's negatives, MLKD's strong views): the run's seed ``_seed`` and the step counter ``_step`` are its extra
    state in the state dict, so a resumed run draws what the original drew."""

    _seed: Optional[int] = None
    _step: int = 0

    def get_extra_state(self):
        return {"step": self._step, "seed": self._seed}

    def set_extra_state(self, state):
        self._step = int(state["step"])
        self._seed = None if state.get("seed") is None else int(state["seed"])

    @property
    def step(self) -> int:
        """Steps so far (restored from the state dict): the step key of the random draws."""
        return self._step


def check_option(ok: bool, method: str, option: str, value, rule: str) -> None:
    """A one-line UserError ``METHOD.OPTION RULE, got VALUE`` unless ``ok`` (``rule``: "must be >= 1 (why)")."""
    if not ok:
        raise UserError(f"{method}.{option} {rule}, got {value!r}")


def is_auto(value) -> bool:
    """Whether a tap option is ``auto``: chosen by the method's ``select_taps`` from the two models' taps."""
    return isinstance(value, str) and value.strip().lower() == "auto"


def one_stage(value: str, option: str) -> str:
    """A one-tap option: ``auto`` -> the last of :data:`COMMON_STAGES` (until ``select_taps``), or a stage tap."""
    if is_auto(value):
        return COMMON_STAGES[-1]
    if value not in STAGE_TAPS:
        raise UserError(f"{option}={value!r}: expected auto or one of {', '.join(STAGE_TAPS)}")
    return value


def shared_taps(method: str, student_taps: Collection[str], teacher_taps: Collection[str],
                taps: Sequence[str] = STAGE_TAPS, least: int = 1) -> Tuple[str, ...]:
    """The taps of ``taps`` that both models have, in that order (the choice of ``stages=auto``); a UserError
    naming ``method`` when they are fewer than ``least`` (1 or 2)."""
    both = tuple(name for name in taps if name in student_taps and name in teacher_taps)
    if len(both) < least:
        kind = "stage" if taps[0] in STAGE_TAPS else "pre-activation"
        need = f"a {kind} tap" if least == 1 else f"two {kind} taps"
        raise UserError(f"{method} needs {need} ({taps[0]}..{taps[-1]}) that both models have; these two share "
                        f"{', '.join(both) or 'none'}")
    return both


def stage_names(value: Union[str, Iterable[str]], option: str) -> Tuple[str, ...]:
    """``"stage1,stage2"`` / ``"stage1+stage2"`` / ``["stage1", "stage2"]`` -> checked tuple of stage taps."""
    if isinstance(value, str):
        value = value.replace("+", ",").split(",")
    names = tuple(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
    bad = [n for n in names if n not in STAGE_TAPS]
    if bad or not names:
        raise UserError(f"option {option}={value!r}: expected stage taps among {', '.join(STAGE_TAPS)}")
    return names


def check_map(t: torch.Tensor, what: str) -> None:
    if t.dim() != 4:
        raise UserError(f"{what} must be an N x C x H x W feature map, got shape {tuple(t.shape)}")


def checked_maps(student_signals, teacher_signals, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(student[name], teacher[name])``, each checked to be an N x C x H x W map (:func:`check_map`)."""
    s, t = student_signals[name], teacher_signals[name]
    check_map(s, f"student tap {name}")
    check_map(t, f"teacher tap {name}")
    return s, t


_POOLS = {"avg": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}


def pool_to(x: torch.Tensor, size: Sequence[int], mode: str = "avg") -> torch.Tensor:
    """Adaptive average (``mode="max"``: max) pooling of the trailing H x W of ``x`` (3-d or 4-d) to ``size``;
    no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dim() == 3:
        return _POOLS[mode](x.unsqueeze(1), tuple(size)).squeeze(1)
    return _POOLS[mode](x, tuple(size))


def match_spatial(a: torch.Tensor, b: torch.Tensor, mode: str = "avg") -> Tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two maps to the smaller one's H x W (per axis), so they can be compared."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return pool_to(a, size, mode), pool_to(b, size, mode)


class ConvRegressor(nn.Sequential):
    """3x3 convolution (stride 1, padding 1, no bias) + BatchNorm: student channels -> teacher channels.

    The FitNets regressor (Romero et al. 2015, section 2.2, a convolutional regressor), in the
    conv+BN form of mdistiller / CRD. No ReLU: some hint taps (MobileNetV2's linear bottlenecks)
    take negative values that a ReLU output could not match (RepDistiller's / mdistiller's ``ConvReg``
    ends with one). Spatial sizes are handled by :func:`match_spatial` after the regressor, so it is
    independent of the input resolution (``ConvReg`` changes its kernel/stride to the size ratio instead).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")
