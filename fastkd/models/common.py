"""Shared pieces of the model zoo: the registry and the stem-surgery helpers.

Every family module registers builders ``build(num_classes: int, low_res: bool) -> nn.Module``
with :func:`register_model`. Lookup is case-insensitive, so torchvision's lower-case
spellings (``resnet18`` for ``ResNet18``) resolve without being registered as aliases
(registering them would clash with the canonical name).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from torch import nn
import torch

from ..registry import Registry
from ..tap_names import is_valid

MODELS: Registry = Registry("model")
register_model = MODELS.register

#: Attribute holding ``{tap name: submodule name}`` on every model built by the zoo.
TAPS_ATTR = "fastkd_taps"
#: Attribute holding the canonical registry name of a model built by the zoo.
NAME_ATTR = "fastkd_name"


def attach_taps(model: nn.Module, taps: Dict[str, str]) -> nn.Module:
    """Set ``model.fastkd_taps`` after checking every name is in the vocabulary and every target is a real
    submodule (a failure is a bug in the zoo)."""
    for tap, target in taps.items():
        if not is_valid(tap):
            raise ValueError(f"feature tap {tap!r} is not a name of fastkd.tap_names")
        model.get_submodule(target)  # raises AttributeError on a typo
    setattr(model, TAPS_ATTR, dict(taps))
    return model


def replace_conv(
    old: nn.Conv2d,
    *,
    kernel_size: Optional[int] = None,
    stride: Optional[int] = None,
    padding: Optional[int] = None,
    bias: Optional[bool] = None,
    init: Optional[Callable[[nn.Conv2d], None]] = None,
) -> nn.Conv2d:
    """A new ``Conv2d`` like ``old`` with some hyper-parameters changed.

    If the weight shape is unchanged (only stride/padding differ) the old, already
    family-initialised, weights are copied; otherwise ``init`` initialises the new conv
    (PyTorch's default init when ``init`` is None).
    """
    new = nn.Conv2d(
        old.in_channels,
        old.out_channels,
        kernel_size=old.kernel_size if kernel_size is None else kernel_size,
        stride=old.stride if stride is None else stride,
        padding=old.padding if padding is None else padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=(old.bias is not None) if bias is None else bias,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        if new.weight.shape == old.weight.shape:
            new.weight.copy_(old.weight)
            if new.bias is not None:
                if old.bias is not None:
                    new.bias.copy_(old.bias)
                else:
                    new.bias.zero_()
        elif init is not None:
            init(new)
    return new


def kaiming_fan_out(conv: nn.Conv2d) -> None:
    """torchvision's ResNet / MobileNetV2 conv init."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
