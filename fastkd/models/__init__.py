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

from typing import List, Optional

from torch import nn

from ..errors import UserError
from ..registry import import_modules
from .common import MODELS, NAME_ATTR, TAPS_ATTR, attach_taps, register_model
from .summary import ModelInfo, count_parameters, describe_models
from .taps import FeatureTaps, model_taps
from . import zoo
from .zoo import is_zoo_name

import_modules(__name__)  # the family modules register their models on import

__all__ = [
    "MODELS",
    "register_model",
    "create_model",
    "canonical_name",
    "list_models",
    "count_parameters",
    "describe_models",
    "model_taps",
    "FeatureTaps",
    "ModelInfo",
    "attach_taps",
]


def create_model(name: str, num_classes: int, low_res: bool, res: Optional[int] = None) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs, randomly initialised.

    ``name``: a seed name (any case; ``low_res=True`` selects its low-resolution stem for CIFAR, MNIST,
    Tiny-ImageNet inputs) or a zoo name ``timm:ARCH`` / ``torchvision:ARCH`` (:mod:`.zoo`; built for
    ``res`` x ``res`` inputs, default 32 with ``low_res`` else 224, and its stem unchanged).
    The result carries ``fastkd_taps`` (tap name -> submodule name) and ``fastkd_name``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    canonical = canonical_name(name)  # UserError listing the known names
    if is_zoo_name(name):
        model = zoo.build_zoo_model(canonical, num_classes, int(res or (32 if low_res else 224)))
    else:
        model = MODELS.get(canonical)(num_classes, bool(low_res))
    if not isinstance(getattr(model, TAPS_ATTR, None), dict):
        raise TypeError(f"model builder {canonical!r} did not attach feature taps")
    setattr(model, NAME_ATTR, canonical)
    return model


def canonical_name(name: str) -> str:
    """The canonical spelling of a seed or zoo model name; a UserError for an unknown one."""
    return zoo.canonical(name) if is_zoo_name(name) else MODELS.canonical(name)


def list_models() -> List[str]:
    """Canonical names of all registered models, in registration order."""
    return MODELS.names()
