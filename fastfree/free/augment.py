"""The augmentation applied to generated images before the teacher sees them (FIVE).

Random crop to the image size after zero-padding by 4, and a horizontal flip with
probability 1/2, one draw for the whole batch (as the authors' code does). Differentiable:
it only pads, slices and flips, so gradients reach the generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_flip(pad: int, generator: torch.Generator) -> tuple[int, int, bool]:
    """One (top, left, flip) draw from a CPU generator."""
    top, left = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    flip = bool(torch.randint(0, 2, (1,), generator=generator).item())
    return top, left, flip


def crop_flip(images: torch.Tensor, top: int, left: int, flip: bool, pad: int = 4) -> torch.Tensor:
    """Pad [..., H, W] by `pad` zeros, take the H x W window at (top, left), maybe flip."""
    h, w = images.shape[-2:]
    out = F.pad(images, (pad, pad, pad, pad))[..., top : top + h, left : left + w]
    return out.flip(-1) if flip else out


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    return crop_flip(images, *draw_crop_flip(pad, generator), pad=pad)
