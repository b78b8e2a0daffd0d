"""The CIFAR ResNet of He et al. 2016 ("Deep Residual Learning", section 4.2): ``resnet32``.

Layout (depth = 6n + 2, n = 5 for ResNet-32): a 3x3 conv with 16 channels, then three stages
of n BasicBlocks with 16 / 32 / 64 channels (the first block of stages 2 and 3 has stride 2),
global average pooling and a linear classifier.

Shortcuts are the paper's **option A**: parameter-free identity shortcuts; where a block
halves the resolution and doubles the width, the shortcut subsamples with stride 2 and
zero-pads the new channels. This gives the paper's 0.46M parameters (464,154 for 10 classes,
470,004 for 100 classes).

Init: kaiming-normal (fan-out, ReLU) convs as torchvision does, BatchNorm weight 1 / bias 0,
PyTorch's default Linear init.

``low_res=True`` is the paper's network (3x3 stride-1 stem, no pooling; 32x32 -> 8x8).
``low_res=False`` swaps in an ImageNet-style stem - 7x7 stride-2 conv (16 ch) + BN + ReLU +
3x3/2 maxpool - so 224x224 inputs cost about as much as 56x56 ones.

Module names mirror torchvision's ResNet (``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1..layer3``, ``avgpool``, ``fc``). Taps: ``stage1..stage3`` = ``layer1..layer3``,
``embedding`` = ``avgpool``. Pre-activation taps ``pre1..pre3`` (:mod:`.preact`): the input of the
last ``relu`` call of each stage's last block (the sum ``bn2(...) + shortcut``), BatchNorm ``bn2``
(as for torchvision ResNets, :mod:`.resnet`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import attach_taps, register_model
from .preact import attach_preact_taps, resnet_preact_taps


class ShortcutA(nn.Module):
    """Option-A shortcut: stride-``stride`` subsampling plus zero-padded extra channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra - before))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 32, num_classes: int = 10, low_res: bool = True):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = (16, 32, 64)
        if low_res:
            self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = widths[0]
        layers = []
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_ch, width, 2 if (i > 0 and j == 0) else 1))
                in_ch = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


CIFAR_RESNET_TAPS = {
    "stage1": "layer1",
    "stage2": "layer2",
    "stage3": "layer3",
    "embedding": "avgpool",
}


@register_model("resnet32")
def resnet32(num_classes: int, low_res: bool) -> nn.Module:
    model = attach_taps(CifarResNet(32, num_classes, low_res), CIFAR_RESNET_TAPS)
    return attach_preact_taps(model, resnet_preact_taps(model, 3))
