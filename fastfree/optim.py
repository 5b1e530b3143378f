"""Optimiser steps (Adam, SGD) as pure functions on dicts of (possibly stacked) tensors.

Used where many models train at once under torch.func: each function returns new tensors
and never mutates its inputs. They reproduce torch.optim.Adam / SGD / clip_grad_norm_ exactly
(same formulas, same order of operations up to rounding), which the tests check in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensors = dict[str, torch.Tensor]


@dataclass
class AdamState:
    exp_avg: Tensors
    exp_avg_sq: Tensors
    step: torch.Tensor  # a 0-d tensor on the device: no host synchronisation to read it

    @staticmethod
    def zeros_like(params: Tensors) -> "AdamState":
        some = next(iter(params.values()))
        return AdamState(
            {k: torch.zeros_like(p) for k, p in params.items()},
            {k: torch.zeros_like(p) for k, p in params.items()},
            torch.zeros((), dtype=torch.float64, device=some.device),
        )


def adam_step(
    params: Tensors, grads: Tensors, state: AdamState, lr: float,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> tuple[Tensors, AdamState]:
    """One torch.optim.Adam step (no weight decay, no amsgrad) as a pure function."""
    beta1, beta2 = betas
    step = state.step + 1
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step).sqrt()
    new_params, new_m, new_v = {}, {}, {}
    for k, p in params.items():
        g = grads[k]
        m = state.exp_avg[k].lerp(g, 1 - beta1)
        v = state.exp_avg_sq[k] * beta2 + (1 - beta2) * g * g
        denom = v.sqrt() / bias_correction2_sqrt.to(p.dtype) + eps
        new_params[k] = p - (lr / bias_correction1).to(p.dtype) * m / denom
        new_m[k], new_v[k] = m, v
    return new_params, AdamState(new_m, new_v, step)


@dataclass
class SgdState:
    momentum_buffer: Tensors

    @staticmethod
    def zeros_like(params: Tensors) -> "SgdState":
        # torch.optim.SGD starts its buffer as a copy of the first gradient; momentum * 0 + g is
        # that copy exactly, so a zero buffer needs no first-step branch (none inside a graph either)
        return SgdState({k: torch.zeros_like(p) for k, p in params.items()})


def sgd_step(
    params: Tensors, grads: Tensors, state: SgdState, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
) -> tuple[Tensors, SgdState]:
    """One torch.optim.SGD step (no dampening, no Nesterov) as a pure function.

    Weight decay is added to the gradient inside the step, as torch does: after any clipping.
    """
    new_params, new_buf = {}, {}
    for k, p in params.items():
        g = grads[k]
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        if momentum:
            g = state.momentum_buffer[k].mul(momentum).add(g)
        new_buf[k] = g if momentum else state.momentum_buffer[k]
        new_params[k] = p.add(g, alpha=-lr)
    return new_params, SgdState(new_buf)


def clip_grad_norm_stacked(grads: Tensors, max_norm: float, model_dims: int = 1) -> Tensors:
    """torch.nn.utils.clip_grad_norm_ applied to each stacked model separately.

    The first `model_dims` dimensions of every tensor index the model; each model's total
    L2 norm over all its gradients is clipped to max_norm (coefficient max_norm/(norm+1e-6),
    capped at 1), as clip_grad_norm_ does for one model.
    """
    norms = [g.flatten(model_dims).norm(dim=-1) for g in grads.values()]
    total = torch.stack(norms).norm(dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return {k: g * coef.view(*coef.shape, *([1] * (g.dim() - model_dims))) for k, g in grads.items()}
