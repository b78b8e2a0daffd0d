"""torchvision ShuffleNetV2 x0.5 / x1.0 / x1.5 / x2.0, unmodified except for the low-res stem.

``low_res=True``: the stem conv (``conv1.0``, already 3x3) gets stride 1 and ``maxpool``
becomes ``nn.Identity()``; total downsampling 8 (32x32 -> 4x4 at ``stage4``).

Taps (strides high-res / low-res): ``stage1`` = ``maxpool`` (stem output, 4 / 1; torchvision
counts conv1+maxpool as the first stage, which is why its blocks are named stage2..stage4),
``stage2`` = ``stage2`` (8 / 2), ``stage3`` = ``stage3`` (16 / 4), ``stage4`` = ``stage4``
(32 / 8), ``embedding`` = ``conv5`` (N x C x H x W; torchvision's forward averages it over
H, W into the vector fed to ``fc``; :class:`FeatureTaps` does the same).
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from .common import attach_taps, register_model, replace_conv

SHUFFLENET_V2_TAPS = {
    "stage1": "maxpool",
    "stage2": "stage2",
    "stage3": "stage3",
    "stage4": "stage4",
    "embedding": "conv5",
}


def _shufflenet(factory, num_classes: int, low_res: bool) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if low_res:
        model.conv1[0] = replace_conv(model.conv1[0], kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    return attach_taps(model, SHUFFLENET_V2_TAPS)


@register_model("shufflenet_v2_x0_5")
def shufflenet_v2_x0_5(num_classes: int, low_res: bool) -> nn.Module:
    return _shufflenet(tvm.shufflenet_v2_x0_5, num_classes, low_res)


@register_model("shufflenet_v2_x1_0")
def shufflenet_v2_x1_0(num_classes: int, low_res: bool) -> nn.Module:
    return _shufflenet(tvm.shufflenet_v2_x1_0, num_classes, low_res)


@register_model("shufflenet_v2_x1_5")
def shufflenet_v2_x1_5(num_classes: int, low_res: bool) -> nn.Module:
    return _shufflenet(tvm.shufflenet_v2_x1_5, num_classes, low_res)


@register_model("shufflenet_v2_x2_0")
def shufflenet_v2_x2_0(num_classes: int, low_res: bool) -> nn.Module:
    return _shufflenet(tvm.shufflenet_v2_x2_0, num_classes, low_res)
