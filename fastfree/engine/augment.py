"""FIVE's crop-and-flip with the draw as a tensor, so that it runs under vmap and in a CUDA graph.

`fastfree.free.augment.crop_flip` takes Python ints (one draw for the whole batch); here the
draw (top, left, flip) is a LongTensor [3] and the window is taken by indexing, the same
values exactly. `draw_table` makes the draws of an iteration on the host in the order the
reference consumes them, so both engines see the same augmentations from the same seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastfree.free.augment import draw_crop_flip


def draw_table(teachers: int, steps: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """[teachers, steps, 3] draws, teacher by teacher, step by step (the reference's order)."""
    rows = [list(draw_crop_flip(pad, generator)) for _ in range(teachers * steps)]
    return torch.tensor(rows, dtype=torch.long).view(teachers, steps, 3)


def crop_flip_indexed(images: torch.Tensor, draw: torch.Tensor, pad: int) -> torch.Tensor:
    """crop_flip(images, top, left, flip, pad) with draw = tensor([top, left, flip])."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = draw[0] + torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    cols = draw[1] + torch.where(draw[2] > 0, w - 1 - cols, cols)
    return padded[..., rows[:, None], cols[None, :]]
