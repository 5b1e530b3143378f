"""Layers shared by the models."""

from __future__ import annotations

import math

import torch
from torch import nn


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose eval mode is an explicit per-channel scale and shift.

    Same parameters, buffers and state-dict keys as nn.BatchNorm2d. Eval-mode
    `F.batch_norm` with per-model (stacked) running statistics has no vmap batching rule
    in torch 2.11-2.13 and falls back to a slow per-model loop; the arithmetic below is the
    same formula and batches. Training mode (batch statistics) is untouched.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None or self.running_var is None:
            return super().forward(x)
        scale = torch.rsqrt(self.running_var + self.eps)
        shift = -self.running_mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        return x * scale[:, None, None] + shift[:, None, None]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


def init_fan_out_(model: nn.Module) -> nn.Module:
    """The authors' initialisation (their network.py, from the CloserLook code base).

    Convolution weights ~ N(0, 2 / (k_h * k_w * out_channels)), BatchNorm weight 1 and bias
    0; convolution biases and linear layers keep PyTorch's defaults. It matters for
    fidelity: training from scratch on a support set (Table 2's Random) reaches 29.6 / 36.2
    on CIFAR-FS with it (paper: 28.59 / 34.77) and 30.6 / 43.7 with PyTorch's default
    convolution initialisation (300 and 600 tasks, measured).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["BatchNorm2d", "conv3x3", "count_parameters", "init_fan_out_"]
