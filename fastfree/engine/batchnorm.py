"""BatchNorm with batch statistics as the native normalisation *without* affine, then the affine
map written out (``x_hat * weight + bias``): same parameters, same names, same values (to
rounding), and right under torch.func where the native kernel's affine part is not.

Two failures of the native ``batch_norm`` with an affine weight batched by vmap, both found
against the reference:
- replay (second order): in torch 2.13 the vmapped double backward is silently wrong, the outer
  gradient of every parameter upstream of a BatchNorm off by O(1) (the same code without vmap,
  and first order, are right);
- FIVE's generator under bf16 autocast: the vmapped backward hands ``native_batch_norm_backward``
  a float32 gradient for a bf16 input and fails ("expected scalar type BFloat16 but found Float").
The affine-free native normalisation is right in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNormThenAffine(nn.Module):
    """A BatchNorm with batch statistics, its affine map applied outside the native kernel.

    Holds the replaced layer's own ``weight``/``bias`` Parameters (so parameter names are
    unchanged); no running statistics.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.eps = bn.eps
        self.weight = bn.weight
        self.bias = bn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)
        shape = (-1,) + (1,) * (x.dim() - 2)
        # in the activations' dtype, as the native layer returns: under bf16 autocast a float32
        # weight would promote every activation after a BatchNorm to float32 (more bytes, casts)
        if self.weight is not None:
            y = y * self.weight.view(shape).to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.view(shape).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"eps={self.eps}, affine={self.weight is not None}"


def affine_outside_batchnorm_(module: nn.Module) -> nn.Module:
    """Replace, in place, every BatchNorm of `module` (which must use batch statistics and keep no
    running statistics, as ``functional_template``'s or the generator's) by BatchNormThenAffine."""
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            if child.track_running_stats and child.running_mean is not None:
                raise ValueError(f"{name}: BatchNormThenAffine uses batch statistics; this layer keeps running ones")
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, BatchNormThenAffine(child))
    return module
