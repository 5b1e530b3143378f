"""FIVE (Algorithm 1): faster inversion via a meta-generator. The sequential reference.

For each teacher M_i of the batch:
  1. clone the meta-generator G(.; theta_G) and sample latent codes Z ~ N(0, I);
  2. k Adam steps on (theta_G^i, Z^i) jointly against Eq. 1, with the images augmented and
     normalised before the teacher (the meta-learner F sees the same view, no gradient);
  3. the recovered task is X_i = G(Z^i; theta_G^i) with labels y (images_per_class of each
     of the teacher's classes);
  4. first-order meta-gradient: g_i = grad of L_G^k at the adapted weights (Eq. 2, [11]).
The meta-generator then takes one step of its own (persistent) Adam on (1/b) sum_i g_i.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from fastfree.data.split import Normalization
from fastfree.errors import FastFreeError
from fastfree.free.augment import crop_flip, draw_crop_flip
from fastfree.free.losses import inversion_loss


@dataclass(frozen=True)
class FiveConfig:
    k: int = 5  # inner adaptation steps (FREE_5; FREE_2 uses 2)
    lr: float = 1e-3  # inner Adam learning rate
    betas: tuple[float, float] = (0.5, 0.999)
    images_per_class: int = 20
    augment: bool = True
    pad: int = 4

    def __post_init__(self) -> None:
        if self.k < 0 or not 0 < self.lr < math.inf or self.images_per_class < 1 or self.pad < 0:
            raise FastFreeError(
                f"FIVE needs k >= 0, a finite lr > 0, images_per_class >= 1, pad >= 0; got k={self.k}, "
                f"lr={self.lr}, images_per_class={self.images_per_class}, pad={self.pad}"
            )


@dataclass
class RecoveredTask:
    """One teacher's recovered task: images in [0, 1] (detached) and task-local labels."""

    images: torch.Tensor
    labels: torch.Tensor
    teacher: int  # index of the teacher in the pool
    eta_rate: float  # fraction of the final images on which teacher and learner agree
    final_loss: float


def task_labels(ways: int, images_per_class: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """y = images_per_class copies of each class 0..ways-1, class-major."""
    return torch.arange(ways, device=device).repeat_interleave(images_per_class)


def _inversion_step_loss(gen, z, teacher, learner, labels, normalization, cfg, adversarial, rng):
    x = gen(z)
    view = crop_flip(x, *draw_crop_flip(cfg.pad, rng), pad=cfg.pad) if cfg.augment else x
    view = normalization.unit(view)
    with torch.no_grad():
        student = learner(view)
    loss, eta = inversion_loss(teacher(view), student, labels, adversarial)
    return x, loss, eta


def adapt_generator(
    generator: nn.Module, teacher: nn.Module, learner: nn.Module, z: torch.Tensor, labels: torch.Tensor,
    normalization: Normalization, cfg: FiveConfig, adversarial: bool, rng: torch.Generator,
) -> tuple[nn.Module, torch.Tensor, list[float]]:
    """Steps 1-2 for one teacher: a clone of the generator and a copy of z after k Adam steps.

    Returns (adapted generator, adapted z, the k inner losses L^0..L^{k-1}).
    """
    gen = copy.deepcopy(generator)
    z = z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([*gen.parameters(), z], lr=cfg.lr, betas=cfg.betas)
    losses = []
    for _ in range(cfg.k):
        _, loss, _ = _inversion_step_loss(gen, z, teacher, learner, labels, normalization, cfg, adversarial, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return gen, z, losses


def five_reference(
    generator: nn.Module, teachers: list[nn.Module], teacher_ids: list[int], learner: nn.Module,
    normalization: Normalization, cfg: FiveConfig, adversarial: bool, rng: torch.Generator,
    latent_rng: torch.Generator | None = None, sequential: bool = False,
) -> tuple[list[RecoveredTask], dict[str, torch.Tensor]]:
    """Algorithm 1 lines 3-7 for a batch of teachers, one after another.

    Returns the recovered tasks and the meta-gradient (1/b) sum_i grad L^k_i by parameter
    name of `generator`. `rng` draws the augmentations, `latent_rng` (default: rng) the codes.
    Teachers must be in eval mode; the learner's BatchNorm uses batch statistics.

    sequential=True is Table 5's baseline generator (no meta-learning): the generator
    adapted to one teacher is copied into `generator` and starts the next teacher's
    adaptation; the returned meta-gradient is then unused.
    """
    if len(teachers) != len(teacher_ids) or not teachers:
        raise FastFreeError("five_reference needs one id per teacher and at least one teacher")
    device = next(generator.parameters()).device
    dtype = next(generator.parameters()).dtype
    names = [n for n, _ in generator.named_parameters()]
    meta_grad = {n: torch.zeros_like(p) for n, p in generator.named_parameters()}
    tasks = []
    for teacher, tid in zip(teachers, teacher_ids):
        ways = _num_outputs(teacher)
        labels = task_labels(ways, cfg.images_per_class, device)
        z = torch.randn(labels.numel(), generator.latent_dim, generator=latent_rng or rng, dtype=dtype).to(device)
        gen, z_i, _ = adapt_generator(generator, teacher, learner, z, labels, normalization, cfg, adversarial, rng)
        if sequential:
            with torch.no_grad():
                for p, q in zip(generator.parameters(), gen.parameters()):
                    p.copy_(q)
        x, loss, eta = _inversion_step_loss(gen, z_i, teacher, learner, labels, normalization, cfg, adversarial, rng)
        grads = torch.autograd.grad(loss, list(gen.parameters()))
        for n, g in zip(names, grads):
            meta_grad[n] += g / len(teachers)
        tasks.append(RecoveredTask(x.detach(), labels, tid, float(eta.mean()), float(loss.detach())))
    return tasks, meta_grad


def apply_meta_gradient(generator: nn.Module, meta_grad: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Algorithm 1 line 8: one step of the meta-generator's persistent optimiser."""
    for n, p in generator.named_parameters():
        p.grad = meta_grad[n].detach().clone()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _num_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features
