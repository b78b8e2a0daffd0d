"""Pieces shared by the feature-based methods: tap-name options, spatial matching, the regressor."""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError
from fastkd.tap_names import COMMON_DEPTH, STAGE_TAPS

#: The stage taps every model family has (``resnet32`` and SqueezeNet stop at ``stage3``).
COMMON_STAGES: Tuple[str, ...] = STAGE_TAPS[:COMMON_DEPTH]


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


def pool_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Adaptive average pooling of the trailing H x W of ``x`` (3-d or 4-d) to ``size``; no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dim() == 3:
        return F.adaptive_avg_pool2d(x.unsqueeze(1), tuple(size)).squeeze(1)
    return F.adaptive_avg_pool2d(x, tuple(size))


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two maps to the smaller one's H x W (per axis), so they can be compared."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return pool_to(a, size), pool_to(b, size)


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
