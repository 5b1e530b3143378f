"""BELL (Algorithm 2) for the fast engine: one batched teacher forward, pure inner steps.

The teachers' logits on all b recovered tasks do not depend on the learner: they come from
one vmapped forward of the stacked, folded teachers (one per architecture in a mixed pool).
The b distillation steps on the clone are sequential by definition (each starts where the
previous ended); they run as a pure function of the parameters (torch.func.grad +
fastfree.optim.adam_step) with nothing read back to the host. Same numbers as
fastfree.free.bell.bell_reference (tested in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fastfree.data.split import Normalization
from fastfree.engine.groups import GroupedBatch, TeacherGroups
from fastfree.engine.options import EngineOptions
from fastfree.engine.teachers import StackedTeachers
from fastfree.errors import FastFreeError
from fastfree.free.bell import BellConfig
from fastfree.free.losses import kl_per_sample
from fastfree.optim import AdamState, adam_step


def _kd(teacher_logits: torch.Tensor, student_logits: torch.Tensor, kernels: bool) -> torch.Tensor:
    if kernels:
        from fastfree.kernels import distillation_loss

        return distillation_loss(teacher_logits, student_logits)
    return kl_per_sample(teacher_logits.detach(), student_logits).mean()


def bell_fast(learner: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              teacher: dict[str, torch.Tensor] | GroupedBatch, teachers: StackedTeachers | TeacherGroups,
              normalization: Normalization, cfg: BellConfig, options: EngineOptions,
              outer_optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """Update `learner` in place from b tasks (images [b, n, ...], labels [n]); returns the losses [b].

    `teacher` holds the b tasks' teachers as `teachers.gather` returns them (stacked tensors, or
    per-architecture parts of a TeacherGroups).
    """
    if cfg.mode == "none":
        raise FastFreeError("BellConfig(mode='none') means no learner update: do not call bell_fast")
    if (cfg.outer == "adam" or cfg.mode == "erm") and outer_optimizer is None:
        raise FastFreeError("BELL with outer='adam' or mode='erm' needs the meta-learner's optimiser")
    device = images.device
    x = normalization.unit(images)
    params = {n: p for n, p in learner.named_parameters()}

    def task_loss(p, xi, target):
        with options.autocast(device):
            logits = functional_call(learner, p, (xi,))
        logits = logits if logits.dtype == torch.float64 else logits.float()  # losses in fp32 under bf16
        if cfg.targets == "hard":
            return F.cross_entropy(logits, target)
        return _kd(target, logits, options.kernels)

    if cfg.targets == "hard":
        targets = labels.expand(images.shape[0], -1)
    else:
        with torch.no_grad(), options.autocast(device):
            targets = teachers.logits(teacher, x)
        targets = targets if targets.dtype == torch.float64 else targets.float()

    if cfg.mode == "erm":
        loss = vmap(task_loss, in_dims=(None, 0, 0))(params, x, targets).mean()
        outer_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        outer_optimizer.step()
        outer_optimizer.zero_grad(set_to_none=True)
        return loss.detach().reshape(1)

    clone = {n: p.detach() for n, p in params.items()}
    state = AdamState.zeros_like(clone)
    losses = []
    for i in range(images.shape[0]):
        g, loss = grad_and_value(task_loss)(clone, x[i], targets[i])
        if cfg.inner_optimizer == "adam":
            clone, state = adam_step(clone, g, state, cfg.inner_lr)
        else:
            clone = {n: p - cfg.inner_lr * g[n] for n, p in clone.items()}
        losses.append(loss)
    with torch.no_grad():
        if cfg.outer == "interpolate":
            for n, p in params.items():
                p.add_(clone[n] - p, alpha=cfg.epsilon)
        else:
            for n, p in params.items():
                p.grad = cfg.grad_scale * (p - clone[n])
    if cfg.outer == "adam":
        outer_optimizer.step()
        outer_optimizer.zero_grad(set_to_none=True)
    return torch.stack(losses)

