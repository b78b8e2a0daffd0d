"""The model zoo: ``create_model(name, num_classes, low_res)`` and friends.

Registered names (case-insensitive, so torchvision spellings such as ``resnet18`` work):
``resnet32`` (CIFAR ResNet, :mod:`.resnet_cifar`), ``ResNet18/34/50/101/152`` (:mod:`.resnet`),
``mobilenet_v2`` (:mod:`.mobilenet`), ``shufflenet_v2_x0_5/x1_0/x1_5/x2_0`` (:mod:`.shufflenet`),
``squeezenet1_0/1_1`` (:mod:`.squeezenet`). torchvision-backed models are torchvision's own
definitions (never with pretrained weights); ``low_res=True`` only swaps in a low-resolution
stem for 32x32 / 64x64 inputs. Feature taps: see :mod:`.taps` and each family module.

A new family is one new module here that decorates ``build(num_classes, low_res) -> nn.Module`` with
``@register_model("Name")`` and calls ``attach_taps``; every module of this package is imported below.
"""
from __future__ import annotations

from typing import List

from torch import nn

from ..errors import UserError
from ..registry import import_modules
from .common import MODELS, NAME_ATTR, TAPS_ATTR, attach_taps, register_model
from .summary import ModelInfo, count_parameters, describe_models
from .taps import FeatureTaps, model_taps

import_modules(__name__)  # the family modules register their models on import

__all__ = [
    "MODELS",
    "register_model",
    "create_model",
    "list_models",
    "count_parameters",
    "describe_models",
    "model_taps",
    "FeatureTaps",
    "ModelInfo",
    "attach_taps",
]


def create_model(name: str, num_classes: int, low_res: bool) -> nn.Module:
    """Build model ``name`` (any case) with ``num_classes`` outputs, randomly initialised.

    ``low_res=True`` selects the low-resolution stem (CIFAR, MNIST, Tiny-ImageNet inputs).
    The result carries ``fastkd_taps`` (tap name -> submodule name) and ``fastkd_name``.
    """
    canonical = MODELS.canonical(name)  # UserError listing the known names
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = MODELS.get(canonical)(num_classes, bool(low_res))
    if not isinstance(getattr(model, TAPS_ATTR, None), dict):
        raise TypeError(f"model builder {canonical!r} did not attach feature taps")
    setattr(model, NAME_ATTR, canonical)
    return model


def list_models() -> List[str]:
    """Canonical names of all registered models, in registration order."""
    return MODELS.names()
