"""BELL (Algorithm 2): better generalisation via the meta-learner. The sequential reference.

Clone the meta-learner, take one optimiser step of knowledge distillation (Eq. 3's
KL(M_i(X_i) || F(X_i))) on each recovered task in sequence, then move the meta-learner
towards the clone: theta <- theta + eps * (theta_tilde - theta) (a first-order, Reptile-style
update [28]; its Taylor expansion maximises the inner product between tasks' gradients).

Options (the published code and the ablations):
- inner optimiser: "adam" (the code: a fresh Adam(alpha) on the clone) or "sgd" (the
  paper's Algorithm 2 line 6, theta_tilde <- theta_tilde - alpha g_i);
- outer update: "interpolate" (the paper's line 7) or "adam" (the code: the meta-learner's
  persistent Adam fed with the "gradient" grad_scale * (theta - theta_tilde), grad_scale 67);
- targets: "soft" (distillation) or "hard" (CE on the task's labels; Table 7's ablation);
- augment: distil on a crop-and-flip of the recovered images (the published code: pad 4, random
  crop, horizontal flip, one draw for all b tasks); the paper does not say. Applied by the trainer
  (free/trainer.py), so every engine distils the same images;
- mode "erm" (Table 5's ERM row): one optimiser step on the meta-learner itself on the
  mean loss over the b tasks, no clone.
"""

from __future__ import annotations

import math
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastfree.data.split import Normalization
from fastfree.errors import FastFreeError
from fastfree.free.five import RecoveredTask
from fastfree.free.losses import distillation_loss


@dataclass(frozen=True)
class BellConfig:
    mode: str = "bell"  # bell | erm | none (Table 5's baseline: the learner learns from replay only)
    inner_optimizer: str = "adam"  # adam | sgd
    inner_lr: float = 1e-3  # alpha
    outer: str = "interpolate"  # interpolate | adam
    epsilon: float = 1e-3  # eps of theta <- theta + eps (theta_tilde - theta)
    grad_scale: float = 67.0  # the published code's outer "gradient" scale (outer="adam")
    targets: str = "soft"  # soft (KD) | hard (CE on the recovered labels)
    augment: bool = False  # crop + flip the b tasks' images (one draw) before distilling, as the published code

    def __post_init__(self) -> None:
        checks = {"mode": ("bell", "erm", "none"), "inner_optimizer": ("adam", "sgd"), "outer": ("interpolate", "adam"),
                  "targets": ("soft", "hard")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise FastFreeError(f"BELL {name}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if not isinstance(self.augment, bool):
            raise FastFreeError(f"BELL augment={self.augment!r}: use True or False")
        if not all(0 < v < math.inf for v in (self.inner_lr, self.epsilon, self.grad_scale)):
            raise FastFreeError(f"BELL needs inner_lr, epsilon and grad_scale finite and > 0; got inner_lr="
                                f"{self.inner_lr}, epsilon={self.epsilon}, grad_scale={self.grad_scale}")


def task_loss(model: nn.Module, teacher: nn.Module, task: RecoveredTask, normalization: Normalization,
              targets: str) -> torch.Tensor:
    x = normalization.unit(task.images)
    if targets == "hard":
        return F.cross_entropy(model(x), task.labels)
    with torch.no_grad():
        teacher_logits = teacher(x)
    return distillation_loss(teacher_logits, model(x))


def bell_reference(
    learner: nn.Module, tasks: list[RecoveredTask], teachers: list[nn.Module], normalization: Normalization,
    cfg: BellConfig, outer_optimizer: torch.optim.Optimizer | None = None,
) -> dict:
    """Update `learner` in place with Algorithm 2 (or ERM). Returns the tasks' losses."""
    if cfg.mode == "none":
        raise FastFreeError("BellConfig(mode='none') means no learner update: do not call bell_reference")
    if len(tasks) != len(teachers) or not tasks:
        raise FastFreeError("BELL needs one teacher per recovered task and at least one task")
    if (cfg.outer == "adam" or cfg.mode == "erm") and outer_optimizer is None:
        raise FastFreeError("BELL with outer='adam' or mode='erm' needs the meta-learner's optimiser")
    if cfg.mode == "erm":
        loss = torch.stack([task_loss(learner, m, t, normalization, cfg.targets) for t, m in zip(tasks, teachers)]).mean()
        outer_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        outer_optimizer.step()
        outer_optimizer.zero_grad(set_to_none=True)
        return {"losses": [float(loss.detach())]}

    clone = copy.deepcopy(learner)
    params = list(clone.parameters())
    inner = torch.optim.Adam(params, lr=cfg.inner_lr) if cfg.inner_optimizer == "adam" \
        else torch.optim.SGD(params, lr=cfg.inner_lr)
    losses = []
    for task, teacher in zip(tasks, teachers):
        loss = task_loss(clone, teacher, task, normalization, cfg.targets)
        inner.zero_grad(set_to_none=True)
        loss.backward()
        inner.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        if cfg.outer == "interpolate":
            for p, q in zip(learner.parameters(), clone.parameters()):
                p.add_(q - p, alpha=cfg.epsilon)
        else:
            for p, q in zip(learner.parameters(), clone.parameters()):
                p.grad = cfg.grad_scale * (p - q)
    if cfg.outer == "adam":
        outer_optimizer.step()
        outer_optimizer.zero_grad(set_to_none=True)
    return {"losses": losses}


def gradient_alignment(learner: nn.Module, tasks: list[RecoveredTask], teachers: list[nn.Module],
                       normalization: Normalization, targets: str = "soft") -> dict:
    """Fig. 5's diagnostic: inner products (and cosines) between the tasks' loss gradients at theta."""
    grads = []
    for task, teacher in zip(tasks, teachers):
        loss = task_loss(learner, teacher, task, normalization, targets)
        g = torch.autograd.grad(loss, list(learner.parameters()))
        grads.append(torch.cat([x.reshape(-1) for x in g]))
    if len(grads) < 2:
        return {"inner_product": float("nan"), "cosine": float("nan"), "conflicting_pairs": 0}
    g = torch.stack(grads)
    gram = g @ g.T
    norms = gram.diagonal().clamp_min(1e-30).sqrt()
    i, j = torch.triu_indices(len(grads), len(grads), 1)
    ip = gram[i, j]
    return {
        "inner_product": float(ip.mean()),
        "cosine": float((ip / (norms[i] * norms[j])).mean()),
        "conflicting_pairs": int((ip < 0).sum()),
    }
