"""Tiny float64 models and a filled memory bank shared by the FREE and fast-engine tests."""

import torch

from fastfree.free.memory import MemoryBank
from fastfree.metatest.adapt import functional_template
from fastfree.models import Conv4, Generator


def tiny_models(seed: int = 0, teachers: int = 2):
    torch.manual_seed(seed)
    gen = Generator(latent_dim=8, ngf=4, image_size=16).double()
    ts = [Conv4(num_classes=5, width=4, image_size=16).double() for _ in range(teachers)]
    for t in ts:  # teachers are frozen, eval-mode models with non-trivial running statistics
        for bn in (m for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        t.eval().requires_grad_(False)
    learner = functional_template(Conv4(num_classes=5, width=4, image_size=16)).double()
    return gen, ts, learner


def filled_bank(classes: int = 6, per_class: int = 5, seed: int = 0, dtype=torch.float64, size: int = 16) -> MemoryBank:
    """A memory bank holding `per_class` random images of each of `classes` classes."""
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(capacity_per_class=8, image_shape=(3, size, size), dtype=dtype)
    labels = torch.arange(classes).repeat(per_class)
    bank.add(torch.rand(len(labels), 3, size, size, generator=g, dtype=dtype), labels)
    return bank
