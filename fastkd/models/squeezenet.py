"""torchvision SqueezeNet 1.0 / 1.1, unmodified except for the optional low-res stem.

``low_res=True``: the first conv (``features.0``: 7x7/2 in 1.0, 3x3/2 in 1.1) becomes a 3x3
stride-1 padding-1 conv (torchvision's kaiming-uniform init, zero bias) and the first maxpool
(``features.2``) becomes ``nn.Identity()``; the two remaining ceil-mode pools give a total
downsampling of 4 (32x32 -> 8x8 final map).

Taps: the Fire module before each remaining pooling, so SqueezeNet has three stages, not four
(strides high-res ~4/8/16, low-res 1/2/4; the stem is not a tap because low-res leaves it at
the same resolution as stage1):
1.0: ``stage1`` = ``features.5``, ``stage2`` = ``features.10``, ``stage3`` = ``features.12``;
1.1: ``stage1`` = ``features.4``, ``stage2`` = ``features.7``, ``stage3`` = ``features.12``.
``embedding`` = ``features`` (N x 512 x H x W, the map fed to the conv classifier; no pooled
vector exists inside SqueezeNet, so :class:`FeatureTaps` global-average-pools it to N x 512).

Pre-activation taps ``pre1..pre3`` (:mod:`.preact`): a Fire module ends with a ReLU on each expand
conv and concatenates them, so ``preK`` = the inputs of ``expand1x1_activation`` and
``expand3x3_activation`` of the stage's Fire, concatenated (``stageK = relu(preK)``). SqueezeNet has
no BatchNorm: ``preK_stats`` are the batch's per-channel moments.
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from .common import attach_taps, register_model, replace_conv
from .preact import PreActTap, attach_preact_taps


def _kaiming_uniform(conv: nn.Conv2d) -> None:
    """torchvision's SqueezeNet init for every conv but the classifier."""
    nn.init.kaiming_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _squeezenet(factory, taps, num_classes: int, low_res: bool) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if low_res:
        model.features[0] = replace_conv(
            model.features[0], kernel_size=3, stride=1, padding=1, init=_kaiming_uniform
        )
        model.features[2] = nn.Identity()
    preact = {
        f"pre{k}": PreActTap((f"{taps[f'stage{k}']}.expand1x1_activation", f"{taps[f'stage{k}']}.expand3x3_activation"))
        for k in (1, 2, 3)
    }
    return attach_preact_taps(attach_taps(model, taps), preact)


@register_model("squeezenet1_0")
def squeezenet1_0(num_classes: int, low_res: bool) -> nn.Module:
    taps = {"stage1": "features.5", "stage2": "features.10", "stage3": "features.12"}
    return _squeezenet(tvm.squeezenet1_0, {**taps, "embedding": "features"}, num_classes, low_res)


@register_model("squeezenet1_1")
def squeezenet1_1(num_classes: int, low_res: bool) -> nn.Module:
    taps = {"stage1": "features.4", "stage2": "features.7", "stage3": "features.12"}
    return _squeezenet(tvm.squeezenet1_1, {**taps, "embedding": "features"}, num_classes, low_res)
