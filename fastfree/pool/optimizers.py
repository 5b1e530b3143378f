"""Which optimiser trains a teacher, as torch.optim (reference trainer) or a pure step (batched).

The authors train Conv4 teachers with Adam(lr 0.01) and, in the multi-architecture pool
(Table 4), ResNets with SGD(lr 0.01, momentum 0.9, weight decay 5e-4), each under a MultiStepLR
schedule (the learning rate times gamma at each milestone epoch). One `OptimizerSpec` describes
any of them; both trainers build their optimiser and read each epoch's rate from it, so the two
paths cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from fastfree.errors import FastFreeError
from fastfree.optim import AdamState, SgdState, Tensors, adam_step, sgd_step

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str  # adam | sgd
    lr: float
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0  # sgd only (added to the gradient inside the step, after clipping)
    milestones: tuple[int, ...] = ()  # epochs from which the rate is multiplied by gamma once more
    gamma: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if any(m < 1 for m in self.milestones) or not 0 < self.gamma <= 1:
            raise FastFreeError(f"learning-rate schedule needs milestones >= 1 and 0 < gamma <= 1; got "
                                f"{self.milestones}, gamma={self.gamma}")
        if self.name not in OPTIMIZERS:
            raise FastFreeError(f"optimiser {self.name!r}: use one of {', '.join(OPTIMIZERS)}")
        if not 0 < self.lr < math.inf or not 0 <= self.momentum < 1 or not 0 <= self.weight_decay < math.inf:
            raise FastFreeError(f"optimiser needs a finite lr > 0, 0 <= momentum < 1, weight_decay >= 0; got lr={self.lr}, "
                                f"momentum={self.momentum}, weight_decay={self.weight_decay}")
        if self.name == "adam" and (self.momentum or self.weight_decay):
            raise FastFreeError("momentum and weight_decay belong to SGD here; Adam takes neither")

    def lr_at(self, epoch: int) -> float:
        """The rate of 0-based `epoch`, as torch's MultiStepLR stepped once after every epoch gives it."""
        lr = self.lr
        for m in self.milestones:  # one multiplication per milestone passed, as torch does (not gamma ** n:
            if m <= epoch:         # that rounds differently once two have passed)
                lr *= self.gamma
        return lr

    def torch(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The optimiser of the one-model reference trainer."""
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def init(self, params: Tensors) -> AdamState | SgdState:
        """The zero state of the pure step, shaped like the (stacked) parameters."""
        return AdamState.zeros_like(params) if self.name == "adam" else SgdState.zeros_like(params)

    def step(self, params: Tensors, grads: Tensors, state: AdamState | SgdState,
             epoch: int = 0) -> tuple[Tensors, AdamState | SgdState]:
        """One step for every stacked model at once (the element-wise formulas do not mix models)."""
        lr = self.lr_at(epoch)
        if self.name == "adam":
            return adam_step(params, grads, state, lr)
        return sgd_step(params, grads, state, lr, self.momentum, self.weight_decay)
