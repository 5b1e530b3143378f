"""Layers shared by the models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["BatchNorm2d", "conv3x3", "count_parameters", "F"]
