"""Conv4: the meta-learner and teacher backbone of the paper (Appendix A).

4 x [Conv3x3(width, padding 1) -> BatchNorm -> ReLU -> MaxPool2], then
Linear(width * (s // 16)^2 -> classes). 32 filters by default. Initialised as the
authors' code does (`init_fan_out_`).
"""

from __future__ import annotations

import torch
from torch import nn

from fastfree.errors import FastFreeError
from fastfree.models.layers import BatchNorm2d, conv3x3, init_fan_out_


def conv4_feature_size(image_size: int) -> int:
    """Spatial side after four 2x2 max-pools (floor each time, as nn.MaxPool2d does)."""
    side = image_size
    for _ in range(4):
        side //= 2
    return side


class Conv4(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 32, image_size: int = 32, in_channels: int = 3):
        super().__init__()
        if width < 1 or num_classes < 1:
            raise FastFreeError(f"Conv4 needs width >= 1 and num_classes >= 1, got {width}, {num_classes}")
        side = conv4_feature_size(image_size)
        if side < 1:
            raise FastFreeError(f"Conv4 needs images of at least 16 px (four 2x max-pools), got {image_size}")
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(4):
            layers += [conv3x3(ch, width, bias=True), BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * side * side, num_classes)
        self.num_classes = num_classes
        self.width = width
        self.image_size = image_size
        init_fan_out_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
