"""torchvision ShuffleNetV2 x0.5 / x1.0 / x1.5 / x2.0, unmodified except for the low-res stem.

``low_res=True``: the stem conv (``conv1.0``, already 3x3) gets stride 1 and ``maxpool``
becomes ``nn.Identity()``; total downsampling 8 (32x32 -> 4x4 at ``stage4``).

Taps (strides high-res / low-res): ``stage1`` = ``maxpool`` (stem output, 4 / 1; torchvision
counts conv1+maxpool as the first stage, which is why its blocks are named stage2..stage4),
``stage2`` = ``stage2`` (8 / 2), ``stage3`` = ``stage3`` (16 / 4), ``stage4`` = ``stage4``
(32 / 8), ``embedding`` = ``conv5`` (N x C x H x W; torchvision's forward averages it over
H, W into the vector fed to ``fc``; :class:`FeatureTaps` does the same).

Pre-activation taps (:mod:`.preact`). A unit's output is ``channel_shuffle(cat(x1, branch2(x2)))``:
the x1 half passes through, already post-ReLU from an earlier unit, so no single tensor is the
pre-ReLU of the whole stage output. ``pre2..pre4`` = the input of the final ReLU of ``branch2`` of the
stage's last unit (``stageK.<last>.branch2.7``, BatchNorm ``branch2.6``): the pre-activation of the
half of the stage output that the unit computes (``stageK[:, 1::2] = relu(preK)``, half the channels).
``pre1`` = the input of the stem ReLU (``conv1.2``, BatchNorm ``conv1.1``): ``stage1 = relu(pre1)`` at
low res; at high res ``stage1 = maxpool(relu(pre1))`` and ``pre1`` has twice stage1's size.
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from .common import attach_taps, register_model, replace_conv
from .preact import PreActTap, attach_preact_taps

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
    preact = {"pre1": PreActTap(("conv1.2",), "input", bn="conv1.1")}
    for k in (2, 3, 4):
        last = f"stage{k}.{len(model.get_submodule(f'stage{k}')) - 1}.branch2"
        preact[f"pre{k}"] = PreActTap((f"{last}.7",), "input", bn=f"{last}.6")
    return attach_preact_taps(attach_taps(model, SHUFFLENET_V2_TAPS), preact)


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
