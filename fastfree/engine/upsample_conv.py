"""Nearest x2 upsampling followed by a 3x3 convolution, as one stride-2 transposed convolution.

FIVE's generator (Table 6) upsamples by 2 (nearest) and then convolves with a 3x3 kernel, twice;
those two convolutions are nearly all of FIVE's arithmetic. Each output pixel of such a pair
reads only 2x2 distinct input pixels (a 3x3 window over a nearest-upsampled image covers 2
source rows and 2 source columns), so per axis the 3 taps collapse into 2, depending on the
output's parity:

    even outputs: x[i-1] * w0 + x[i] * (w1 + w2)        odd outputs: x[i] * (w0 + w1) + x[i+1] * w2

which is exactly a transposed convolution with stride 2, padding 1 and a 4-tap kernel per axis,
(w2, w1 + w2, w0 + w1, w0). The result equals upsample-then-convolve up to summation order
(float64: ~1e-15), with 4/9 of the multiply-adds, one kernel instead of two and no upsampled
activation (4x the input) stored for the backward. The kernel is rebuilt from the 3x3 weight
on every call, so the parameters, their names and their gradients stay those of the paper's
generator (the meta-gradient and Adam see the 3x3 weights).

Measured on the 2-core CPU, one thread: issue 4's FIVE epoch (ngf 64, 32 px, 100 images) took
26.8 s as written and 13.5 s fused (the reference: 25.1 s; bench_five's fast_unfused vs fast,
profiling/results/2026-11-26-cpu-bench_five_fused_upsample.json). On a GPU: unmeasured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _collapse_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """3 taps along `dim` -> the 4 taps of the stride-2 transposed convolution (see the module doc)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def upsampled_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """A Conv2d's 3x3 weight [out, in, 3, 3] -> conv_transpose2d's 4x4 weight [in, out, 4, 4]."""
    return _collapse_taps(_collapse_taps(weight, 2), 3).transpose(0, 1)


def upsample_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1) for a 3x3
    weight, without the upsampled tensor."""
    return F.conv_transpose2d(x, upsampled_conv_weight(weight), bias, stride=2, padding=1)


class UpsampledConv2d(nn.Module):
    """Takes the place of a 3x3 Conv2d that follows a nearest x2 Upsample (which becomes Identity);
    holds that convolution's own Parameters, so names and values are unchanged."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv2d(x, self.weight, self.bias)


def _is_nearest_x2(m: nn.Module) -> bool:
    scale = m.scale_factor if isinstance(m, nn.Upsample) else None
    scales = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
    return (isinstance(m, nn.Upsample) and m.mode == "nearest" and m.size is None
            and all(s is not None and float(s) == 2.0 for s in scales))


def _is_plain_3x3(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def fuse_upsample_conv_(module: nn.Module) -> int:
    """In place: in every nn.Sequential of `module`, each nearest x2 Upsample directly followed by
    a plain 3x3 convolution (stride 1, padding 1, zeros) becomes Identity + UpsampledConv2d.
    Returns how many pairs were fused."""
    fused = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for up, conv in zip(names, names[1:]):
            if _is_nearest_x2(seq._modules[up]) and _is_plain_3x3(seq._modules[conv]):
                seq._modules[conv] = UpsampledConv2d(seq._modules[conv])
                seq._modules[up] = nn.Identity()
                fused += 1
    return fused
