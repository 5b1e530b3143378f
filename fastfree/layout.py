"""Memory layout of image batches: channels-last on a CPU.

oneDNN's CPU convolutions run faster on channels-last (NHWC) inputs than on contiguous (NCHW)
ones at this project's sizes; each convolution's output follows its input's layout, so converting
the images is enough (the weights stay as they are). Measured on a 2-core CPU, torch 2.13, 2 threads:
one 5-shot meta-test task's adaptation (Conv4-32, 32 px, 10 SGD steps, 75 queries) 294 -> 134 ms
(1-shot about equal); a teacher's pretraining step 47-61 -> 29-31 ms per teacher-step
(profiling/bench_pool.py); FIVE's epoch with the demo's sizes, teachers and learner fed
channels-last, about 1.15x (profiling/bench_five.py, noisy). Second-order replay gained nothing
(507 vs 519-587 ms per meta-batch) and is left as it is. The arithmetic is the same up to rounding
(float64: 1.8e-14 on an adapted task's logits), which tests check where it is used.
"""

from __future__ import annotations

import torch


def cpu_layout(images: torch.Tensor) -> torch.Tensor:
    """`images` [N, C, H, W] channels-last where they live on a CPU; anything else unchanged
    (CUDA: cuDNN picks its own layouts, and torch.compile's inductor has its own heuristic)."""
    if images.device.type != "cpu" or images.dim() != 4:
        return images
    return images.contiguous(memory_format=torch.channels_last)


__all__ = ["cpu_layout"]
