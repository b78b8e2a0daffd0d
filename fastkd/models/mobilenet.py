"""torchvision MobileNetV2, unmodified except for the optional low-res stem.

torchvision's ``features`` downsample at ``features.0`` (stem conv), ``features.2``,
``features.4``, ``features.7`` and ``features.14`` (total stride 32).
``low_res=True`` sets the stem conv (``features.0.0``) and the depthwise conv of the first
stride-2 inverted residual (``features.2.conv.1.0``) to stride 1, by assignment of equal-shape
convs carrying the same initial weights. Total downsampling becomes 8: 32x32 -> 4x4 final map
(the CIFAR MobileNetV2 recipe). Parameter count is unchanged.

Taps (last block of each resolution stage; strides high-res / low-res):
``stage1`` = ``features.3`` (4 / 1, 24 ch), ``stage2`` = ``features.6`` (8 / 2, 32 ch),
``stage3`` = ``features.13`` (16 / 4, 96 ch), ``stage4`` = ``features.18`` (32 / 8, the final
1x1 conv, 1280 ch), ``embedding`` = ``features`` (N x 1280 x H x W; torchvision's forward
global-average-pools it into the vector fed to ``classifier``; :class:`FeatureTaps` does the same).

Pre-activation taps (:mod:`.preact`): ``pre1..pre3`` = the outputs of ``features.3/6/13`` themselves
(inverted residuals end linearly: projection conv + BN, plus the identity; no activation follows),
BatchNorm = the projection BN ``conv.3`` (the identity is ignored, as for ResNets); ``pre4`` = the
input of the final ReLU6 (``features.18.2``), BatchNorm ``features.18.1``; ``stage4 = relu6(pre4)``.
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from .common import attach_taps, register_model, replace_conv
from .preact import PreActTap, attach_preact_taps

MOBILENET_V2_TAPS = {
    "stage1": "features.3",
    "stage2": "features.6",
    "stage3": "features.13",
    "stage4": "features.18",
    "embedding": "features",
}
MOBILENET_V2_PREACT_TAPS = {
    **{f"pre{k}": PreActTap((f"features.{i}",), "output", bn=f"features.{i}.conv.3", activation="identity")
       for k, i in ((1, 3), (2, 6), (3, 13))},
    "pre4": PreActTap(("features.18.2",), "input", bn="features.18.1", activation="relu6"),
}


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int, low_res: bool) -> nn.Module:
    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes)
    if low_res:
        stem = model.features[0]
        stem[0] = replace_conv(stem[0], stride=1)
        block = model.features[2]  # first stride-2 InvertedResidual (16 -> 24 ch, no residual)
        block.conv[1][0] = replace_conv(block.conv[1][0], stride=1)
        block.stride = 1
    return attach_preact_taps(attach_taps(model, MOBILENET_V2_TAPS), MOBILENET_V2_PREACT_TAPS)
