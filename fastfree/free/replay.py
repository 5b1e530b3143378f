"""Cross-task replay (Sec. 4.2, Eq. 4; Algorithm 3 lines 9-10): MAML on tasks from the memory bank.

    min_theta  sum_{T in meta-batch} CE(F(Q; theta_c), Y_Q),
    theta_c = theta after `inner_steps` SGD steps (lr `inner_lr`) on CE(F(S; .), Y_S).

This is the paper-faithful sequential reference (one task at a time, plain autograd), the
oracle the fast engine is tested against.

BatchNorm: the learner is run through ``torch.func.functional_call`` on a
``functional_template`` copy (fastfree.metatest.adapt), whose BatchNorm layers always use
the statistics of the batch they see and keep no running statistics. So, as in the
authors' code (which keeps the meta-learner in train mode and never reads running
statistics), the support forward normalises with support statistics and the query forward
with query statistics; the learner's own running statistics are neither read nor updated
by replay. The gradient still flows to the learner's own parameters (they are the tensors
passed to functional_call).

Images: the bank holds generator outputs in [0, 1]; they are normalised here with the
data set's mean/std (``Normalization.unit``) in the learner's parameter dtype. No augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastfree.data.episodes import EpisodeBatch
from fastfree.data.split import Normalization
from fastfree.errors import FastFreeError
from fastfree.free.memory import MemoryBank
from fastfree.metatest.adapt import functional_template


@dataclass(frozen=True)
class ReplayConfig:
    """Cross-task replay settings; defaults are the authors' (5-way, 15 queries, 5 inner SGD steps
    at lr 0.01, second order, outer Adam lr 1e-3 on the sum over 10 tasks, patience 10).

    outer_lr is for the caller, who builds the persistent outer optimiser (torch.optim.Adam); in a FREE
    run that is the meta-learner's one Adam, whose rate is FreeConfig.learner_lr (a different outer_lr
    is refused there).
    max_meta_batches caps one replay call so it always ends.
    """

    meta_batch: int = 10
    ways: int = 5
    shots: int = 1
    queries: int = 15
    inner_steps: int = 5
    inner_lr: float = 0.01
    outer_lr: float = 1e-3
    second_order: bool = True
    patience: int = 10
    max_meta_batches: int = 200

    def __post_init__(self) -> None:
        ints = {"meta_batch": (self.meta_batch, 1), "ways": (self.ways, 2), "shots": (self.shots, 1),
                "queries": (self.queries, 1), "inner_steps": (self.inner_steps, 0),
                "patience": (self.patience, 1), "max_meta_batches": (self.max_meta_batches, 1)}
        for name, (value, low) in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FastFreeError(f"replay needs {name} to be an integer >= {low}, got {value!r}: fix the replay config")
        for name, value in (("inner_lr", self.inner_lr), ("outer_lr", self.outer_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise FastFreeError(f"replay needs a finite {name} > 0, got {value!r}: use e.g. 0.01 (inner) / 1e-3 (outer)")
        if not isinstance(self.second_order, bool):
            raise FastFreeError(f"replay's second_order must be True or False, got {self.second_order!r}")


def _trainable(learner: nn.Module) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in learner.named_parameters() if p.requires_grad}
    if not params:
        raise FastFreeError("replay needs a learner with trainable parameters (requires_grad), found none")
    return params


def maml_meta_batch_reference(
    learner: nn.Module, batch: EpisodeBatch, normalization: Normalization, cfg: ReplayConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The oracle, one task at a time, plain autograd.

    For each task: `cfg.inner_steps` SGD steps on CE(F(S)) from the learner's parameters
    (create_graph=cfg.second_order; first order detaches the inner gradients, i.e. FOMAML),
    then CE(F(Q)) at the adapted parameters. The outer loss is the SUM over tasks; its
    gradient is accumulated task by task (same value, one task's graph alive at a time).

    Returns (gradient of the summed outer loss w.r.t. the learner's trainable parameters by
    name, the summed outer loss (0-d, detached), the mean query accuracy over the tasks (0-d,
    float64)). The learner itself is not modified (no .grad, no running statistics).
    """
    params = _trainable(learner)
    template = functional_template(learner)
    support, query = normalized_tasks(batch, params, normalization)
    # one task's graph alive at a time
    outs = [task_outer_gradient(template, params, batch, support, query, t, cfg) for t in range(len(batch))]
    return summed_over_tasks(params, outs)


TaskOuter = tuple[tuple[torch.Tensor | None, ...], torch.Tensor, torch.Tensor]


def normalized_tasks(batch: EpisodeBatch, params: dict[str, torch.Tensor],
                     normalization: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """The support and query images normalised, in the parameters' dtype."""
    dtype = next(iter(params.values())).dtype
    return normalization.unit(batch.support.to(dtype)), normalization.unit(batch.query.to(dtype))


def task_outer_gradient(template: nn.Module, params: dict[str, torch.Tensor], batch: EpisodeBatch,
                        support: torch.Tensor, query: torch.Tensor, t: int, cfg: ReplayConfig) -> TaskOuter:
    """Task t of the meta-batch: `cfg.inner_steps` SGD steps on its support cross-entropy from `params`,
    then the gradient of its query cross-entropy at the adapted parameters with respect to `params`
    (by position in `params`, None where unused), that loss (detached) and its query accuracy
    (float64). `template` (a functional_template) is run with functional_call, which swaps its
    parameters in place: tasks run at the same time need a template each."""
    names = list(params)
    fast = dict(params)
    for _ in range(cfg.inner_steps):
        inner = F.cross_entropy(functional_call(template, fast, (support[t],)), batch.support_labels[t])
        g = torch.autograd.grad(inner, [fast[n] for n in names], create_graph=cfg.second_order, allow_unused=True)
        fast = {n: fast[n] if gn is None else fast[n] - cfg.inner_lr * (gn if cfg.second_order else gn.detach())
                for n, gn in zip(names, g)}
    logits = functional_call(template, fast, (query[t],))
    outer = F.cross_entropy(logits, batch.query_labels[t])
    g_outer = torch.autograd.grad(outer, [params[n] for n in names], allow_unused=True)
    accuracy = (logits.detach().argmax(-1) == batch.query_labels[t]).double().mean()
    return g_outer, outer.detach(), accuracy


def summed_over_tasks(params: dict[str, torch.Tensor],
                      outs: list[TaskOuter]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The meta-batch's returns from its tasks' (task_outer_gradient), summed in task order: the sum of
    the outer gradients by name, the summed outer loss, the mean accuracy."""
    first = next(iter(params.values()))
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    total_loss = torch.zeros((), dtype=first.dtype, device=first.device)
    accuracy = torch.zeros((), dtype=torch.float64, device=first.device)
    for g_outer, outer, task_accuracy in outs:
        for n, gn in zip(params, g_outer):
            if gn is not None:
                grads[n] += gn
        total_loss = total_loss + outer
        accuracy = accuracy + task_accuracy
    return grads, total_loss, accuracy / len(outs)


def replay(
    learner: nn.Module, optimizer: torch.optim.Optimizer, bank: MemoryBank, normalization: Normalization,
    cfg: ReplayConfig, generator: torch.Generator,
    meta_batch_fn: Callable[[nn.Module, EpisodeBatch, Normalization, ReplayConfig],
                            tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """Replay meta-batches from the bank until `cfg.patience` in a row bring no gain.

    Each meta-batch: sample `cfg.meta_batch` tasks (bank.sample_tasks with `generator`), compute
    `meta_batch_fn` (default: `maml_meta_batch_reference`), set every trainable parameter's .grad
    to the summed outer-loss gradient and call `optimizer.step()` (the caller's persistent outer
    optimiser).

    meta_batch_fn: any callable with `maml_meta_batch_reference`'s signature and return values
    ((learner, batch, normalization, cfg) -> (grads by name, summed outer loss, mean accuracy)),
    e.g. the fast engine's `fastfree.engine.replay.maml_meta_batch_fast`, which so reuses this
    patience loop. None (the default) means `maml_meta_batch_reference`, looked up in this
    module when replay is called.

    Patience (the authors' loop): the best meta-batch accuracy starts unset in every call; a
    meta-batch is a gain if its accuracy is strictly greater than the best so far (the first
    one always is), which resets the counter; otherwise the counter grows, and replay stops
    when it reaches `cfg.patience`. So a call runs at least patience + 1 meta-batches
    (unless `cfg.max_meta_batches` is smaller), and at most `cfg.max_meta_batches`.

    Returns {"meta_batches", "last_accuracy", "best_accuracy", "mean_outer_loss" (mean over
    meta-batches of the summed outer loss), "accuracies" (per meta-batch), "stopped"
    ("patience" | "max_meta_batches" | "bank_too_small")}. If the bank cannot form a task yet
    (fewer than `ways` classes with shots + queries images) nothing is updated and
    meta_batches is 0.
    """
    if meta_batch_fn is None:
        meta_batch_fn = maml_meta_batch_reference
    params = _trainable(learner)
    accuracies: list[float] = []
    losses: list[float] = []
    best: float | None = None
    since_best = 0
    stopped = "max_meta_batches"
    for _ in range(cfg.max_meta_batches):
        batch = bank.sample_tasks(cfg.meta_batch, cfg.ways, cfg.shots, cfg.queries, generator)
        if batch is None:
            stopped = "bank_too_small"
            break
        grads, loss, acc = meta_batch_fn(learner, batch, normalization, cfg)
        for n, p in params.items():
            p.grad = grads[n].detach().to(p.dtype)
        optimizer.step()
        acc_f = float(acc)
        accuracies.append(acc_f)
        losses.append(float(loss))
        if best is None or acc_f > best:
            best, since_best = acc_f, 0
        else:
            since_best += 1
            if since_best >= cfg.patience:
                stopped = "patience"
                break
    return {
        "meta_batches": len(accuracies),
        "last_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": best,
        "mean_outer_loss": sum(losses) / len(losses) if losses else None,
        "accuracies": accuracies,
        "stopped": stopped,
    }
