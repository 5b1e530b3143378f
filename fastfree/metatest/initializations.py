"""Where each meta-test method starts from (Table 2's data-free baselines).

- random: a freshly initialised classifier per task ("learn a classifier from scratch"), its
  seed drawn from (seed, task) so the sequential and batched paths and repeated runs agree;
- average: the element-wise mean of all teachers' parameters, then fine-tuned;
- best-model: the teacher with the highest held-out accuracy, then fine-tuned with the same
  protocol (the paper's Best-Model row differs between 1 and 5 shots, so it is adapted too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from fastfree.errors import FastFreeError
from fastfree.metatest.adapt import functional_template

METHODS = ("random", "average", "best-model")


@dataclass
class Initialization:
    """A template module (batch-statistics BN) and, per task, its starting parameters."""

    template: nn.Module
    shared: dict[str, torch.Tensor] | None = None  # same start for every task
    builder: Callable[[], nn.Module] | None = None  # fresh random start per task
    seed: int = 0

    def for_tasks(self, tasks: range | list[int], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if self.shared is not None:
            n = len(tasks)
            return {k: v.to(device, dtype).unsqueeze(0).expand(n, *v.shape) for k, v in self.shared.items()}
        assert self.builder is not None
        starts = []
        for t in tasks:
            seed = int(np.random.SeedSequence([self.seed, t, 7]).generate_state(1)[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                starts.append(dict(self.builder().named_parameters()))
        return {k: torch.stack([s[k].detach() for s in starts]).to(device, dtype) for k in starts[0]}


def _parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def random_init(builder: Callable[[], nn.Module], seed: int) -> Initialization:
    return Initialization(functional_template(builder()), builder=builder, seed=seed)


def average_init(teachers: list[nn.Module]) -> Initialization:
    if not teachers:
        raise FastFreeError("the average baseline needs a pool with at least one teacher")
    archs = {type(t).__name__ + str([tuple(p.shape) for p in t.parameters()]) for t in teachers}
    if len(archs) != 1:
        raise FastFreeError("the average baseline needs teachers of one architecture; this pool mixes several")
    params = [_parameters(t) for t in teachers]
    mean = {k: torch.stack([p[k] for p in params]).mean(0) for k in params[0]}
    return Initialization(functional_template(teachers[0]), shared=mean)


def best_model_init(teachers: list[nn.Module], heldout_accuracy: list[float]) -> Initialization:
    if not teachers:
        raise FastFreeError("the best-model baseline needs a pool with at least one teacher")
    best = int(np.argmax(heldout_accuracy))
    return Initialization(functional_template(teachers[best]), shared=_parameters(teachers[best]))
