"""Models: Conv4, few-shot ResNets and the FIVE meta-generator, plus a small registry."""

from __future__ import annotations

from typing import Callable

from torch import nn

from fastfree.errors import FastFreeError
from fastfree.models.conv4 import Conv4
from fastfree.models.generator import Generator
from fastfree.models.layers import BatchNorm2d, count_parameters
from fastfree.models.resnet import ResNet, resnet10, resnet18, resnet50

# name -> (constructor(num_classes, width, image_size), default width)
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "conv4": (lambda num_classes, width, image_size: Conv4(num_classes, width, image_size), 32),
    "resnet10": (resnet10, 64),
    "resnet18": (resnet18, 64),
    "resnet50": (resnet50, 64),
}


def build_model(arch: str, num_classes: int = 5, width: int | None = None, image_size: int = 32) -> nn.Module:
    """Build a classifier by name; width None takes the architecture's default."""
    if arch not in ARCHITECTURES:
        raise FastFreeError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    ctor, default_width = ARCHITECTURES[arch]
    return ctor(num_classes=num_classes, width=default_width if width is None else width, image_size=image_size)


def default_width(arch: str) -> int:
    if arch not in ARCHITECTURES:
        raise FastFreeError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch][1]


__all__ = [
    "ARCHITECTURES", "BatchNorm2d", "Conv4", "Generator", "ResNet", "build_model", "count_parameters",
    "default_width", "resnet10", "resnet18", "resnet50",
]
