"""Small CPU workloads of the hot paths, shared by the benchmark regression tests and the
invariant tests (same shapes, so FLOP counts and timings describe the same work)."""

from __future__ import annotations

import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.engine.augment import draw_table
from fastfree.engine.five import FastFive
from fastfree.engine.options import EngineOptions
from fastfree.engine.teachers import StackedTeachers
from fastfree.free.five import FiveConfig, five_reference, task_labels
from fastfree.free.memory import MemoryBank
from fastfree.free.replay import ReplayConfig
from fastfree.metatest.adapt import functional_template
from fastfree.models import Conv4, Generator

CPU = torch.device("cpu")
B, K, WAYS, PER_CLASS, NGF, WIDTH, SIZE = 2, 2, 5, 4, 8, 8, 16


class FiveWorkload:
    """One FIVE epoch (b=2, k=2, 20 codes, ngf 8, Conv4-8 at 16 px) on both engines."""

    def __init__(self, vectorize: bool = False, fuse_upsample: bool = True):
        torch.manual_seed(0)
        self.gen = Generator(32, NGF, SIZE)
        self.teachers = [Conv4(WAYS, WIDTH, SIZE).eval().requires_grad_(False) for _ in range(B)]
        self.learner = functional_template(Conv4(WAYS, WIDTH, SIZE))
        self.cfg = FiveConfig(k=K, images_per_class=PER_CLASS)
        self.labels = task_labels(WAYS, PER_CLASS)
        self.z = torch.randn(B, WAYS * PER_CLASS, 32)
        self.draws = draw_table(B, K + 1, self.cfg.pad, torch.Generator().manual_seed(0))
        options = EngineOptions.for_device(CPU, vectorize=vectorize, fuse_upsample=fuse_upsample)
        self.fast = FastFive(self.gen, StackedTeachers(self.teachers), self.learner, CIFAR100_NORM, self.cfg,
                             options, CPU)

    def reference(self):
        return five_reference(self.gen, self.teachers, list(range(B)), self.learner, CIFAR100_NORM, self.cfg, True,
                              torch.Generator().manual_seed(0))

    def fast_epoch(self):
        return self.fast(dict(self.gen.named_parameters()), self.z, torch.arange(B), self.draws,
                         dict(self.learner.named_parameters()), self.labels, True)


def replay_batch():
    """A meta-batch of 4 tasks (5-way 1-shot, 3 queries, 2 inner steps, second order) from a bank."""
    cfg = ReplayConfig(meta_batch=4, ways=WAYS, shots=1, queries=3, inner_steps=2, second_order=True)
    torch.manual_seed(0)
    learner = functional_template(Conv4(WAYS, WIDTH, SIZE))
    bank = MemoryBank(capacity_per_class=4, image_shape=(3, SIZE, SIZE))
    g = torch.Generator().manual_seed(0)
    bank.add(torch.rand(40, 3, SIZE, SIZE, generator=g), torch.arange(10).repeat(4))
    return learner, bank.sample_tasks(cfg.meta_batch, WAYS, 1, 3, g), cfg
