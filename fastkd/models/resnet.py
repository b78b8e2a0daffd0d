"""torchvision ResNet-18/34/50/101/152, unmodified except for the optional low-res stem.

``low_res=True`` (32x32 / 64x64 inputs) uses the usual CIFAR stem: ``conv1`` becomes a
3x3 stride-1 conv (no bias, torchvision's kaiming fan-out init) and ``maxpool`` becomes
``nn.Identity()``, so the total downsampling is 8 (32x32 -> 4x4 at ``layer4``) instead of 32.

Taps: ``stage1..stage4`` = ``layer1..layer4`` (strides 4/8/16/32 high-res, 1/2/4/8 low-res),
``embedding`` = ``avgpool`` (N x C x 1 x 1, flattened it is the vector fed to ``fc``).

Pre-activation taps (:mod:`.preact`) ``pre1..pre4``: the residual sum ``out + identity`` of the last
block of ``layer1..layer4``, read as the input of the last call of that block's ``relu`` (called 2x in
a BasicBlock, 3x in a Bottleneck); ``stage{k} = relu(pre{k})``. BatchNorm: the block's last one (``bn2``
/ ``bn3``), which ignores the identity branch - the choice of Heo et al.'s reference code.
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from .common import attach_taps, kaiming_fan_out, register_model, replace_conv
from .preact import attach_preact_taps, resnet_preact_taps

RESNET_TAPS = {
    "stage1": "layer1",
    "stage2": "layer2",
    "stage3": "layer3",
    "stage4": "layer4",
    "embedding": "avgpool",
}


def _resnet(factory, num_classes: int, low_res: bool) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if low_res:
        model.conv1 = replace_conv(
            model.conv1, kernel_size=3, stride=1, padding=1, bias=False, init=kaiming_fan_out
        )
        model.maxpool = nn.Identity()
    return attach_preact_taps(attach_taps(model, RESNET_TAPS), resnet_preact_taps(model, 4))


@register_model("ResNet18")
def resnet18(num_classes: int, low_res: bool) -> nn.Module:
    return _resnet(tvm.resnet18, num_classes, low_res)


@register_model("ResNet34")
def resnet34(num_classes: int, low_res: bool) -> nn.Module:
    return _resnet(tvm.resnet34, num_classes, low_res)


@register_model("ResNet50")
def resnet50(num_classes: int, low_res: bool) -> nn.Module:
    return _resnet(tvm.resnet50, num_classes, low_res)


@register_model("ResNet101")
def resnet101(num_classes: int, low_res: bool) -> nn.Module:
    return _resnet(tvm.resnet101, num_classes, low_res)


@register_model("ResNet152")
def resnet152(num_classes: int, low_res: bool) -> nn.Module:
    return _resnet(tvm.resnet152, num_classes, low_res)
