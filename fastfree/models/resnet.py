"""Few-shot style ResNets (ResNet-10/18/50): 3x3 stride-1 stem, no max-pool.

The stem keeps full resolution, as in the few-shot and CIFAR literature; stages of
64/128/256/512 channels with strides 1/2/2/2, global average pooling, a linear head.
Table 1's ResNet figures (e.g. ResNet-18 at 32 px: 1.1158 GFLOPs = 2 x MACs) follow from it.
Initialised as the authors' code does (`init_fan_out_`). Their stem has no ReLU after its
BatchNorm (a quirk of their network.py); ours has the usual one.
"""

from __future__ import annotations

import torch
from torch import nn

from fastfree.errors import FastFreeError
from fastfree.models.layers import BatchNorm2d, conv3x3, init_fan_out_


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(in_ch, ch, stride)
        self.bn1 = BatchNorm2d(ch)
        self.conv2 = conv3x3(ch, ch)
        self.bn2 = BatchNorm2d(ch)
        self.shortcut = _shortcut(in_ch, ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int):
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = BatchNorm2d(ch)
        self.conv2 = conv3x3(ch, ch, stride)
        self.bn2 = BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), BatchNorm2d(out_ch))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, int, int, int],
                 num_classes: int = 5, width: int = 64, image_size: int = 32):
        super().__init__()
        if width < 1 or num_classes < 1:
            raise FastFreeError(f"ResNet needs width >= 1 and num_classes >= 1, got {width}, {num_classes}")
        self.conv1 = conv3x3(3, width)
        self.bn1 = BatchNorm2d(width)
        stages = []
        in_ch = width
        for i, depth in enumerate(depths):
            ch = width * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(block(in_ch, ch, stride=(1 if i == 0 or j > 0 else 2)))
                in_ch = ch * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        self.num_classes = num_classes
        self.width = width
        self.image_size = image_size
        init_fan_out_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(self.pool(out).flatten(1))


def resnet10(num_classes: int = 5, width: int = 64, image_size: int = 32) -> ResNet:
    return ResNet(BasicBlock, (1, 1, 1, 1), num_classes, width, image_size)


def resnet18(num_classes: int = 5, width: int = 64, image_size: int = 32) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, width, image_size)


def resnet50(num_classes: int = 5, width: int = 64, image_size: int = 32) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, width, image_size)
