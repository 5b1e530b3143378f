"""Fine-tune-then-predict on few-shot tasks: the sequential reference, the threaded and the vmapped path.

Both adapt a copy of the initial parameters with `steps` plain SGD steps on the support
cross-entropy and predict the query set. BatchNorm uses batch statistics throughout (the
meta-test protocol of the paper's code), so the template must have no running statistics
(`functional_template`). Task t starts from `init[name][t]`.
"""

from __future__ import annotations

import copy
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from fastfree.data.episodes import EpisodeBatch
from fastfree.layout import cpu_layout
from fastfree.threads import map_single_threaded


def functional_template(model: nn.Module) -> nn.Module:
    """A copy whose BatchNorm layers always use batch statistics and keep no running stats."""
    template = copy.deepcopy(model)
    replace_all_batch_norm_modules_(template)
    return template.train()


def adapted_copy(template: nn.Module, params: dict[str, torch.Tensor], support: torch.Tensor,
                 support_labels: torch.Tensor, steps: int, lr: float) -> nn.Module:
    """One task's adaptation: a deep copy of `template` holding `params`, `steps` torch.optim.SGD steps.
    (On a CPU the support images are used channels-last, fastfree.layout; predict with `cpu_layout` too.)"""
    support = cpu_layout(support)
    model = copy.deepcopy(template)
    model.load_state_dict(params, strict=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(support), support_labels).backward()
        opt.step()
    return model


def adapted_query_logits_reference(
    template: nn.Module, init: dict[str, torch.Tensor], batch: EpisodeBatch, steps: int, lr: float
) -> torch.Tensor:
    """The oracle: one task at a time, a deep copy, torch.optim.SGD. Returns [T, ways*queries, ways]."""
    return torch.stack([_adapted_task_logits(template, init, batch, t, steps, lr) for t in range(len(batch))])


def _adapted_task_logits(template: nn.Module, init: dict[str, torch.Tensor], batch: EpisodeBatch, t: int, steps: int,
                         lr: float) -> torch.Tensor:
    """Task t of the batch: adapted from `init[name][t]`, its query logits."""
    model = adapted_copy(template, {k: v[t] for k, v in init.items()}, batch.support[t], batch.support_labels[t],
                         steps, lr)
    with torch.no_grad():
        return model(cpu_layout(batch.query[t]))


def adapted_query_logits_threaded(
    template: nn.Module, init: dict[str, torch.Tensor], batch: EpisodeBatch, steps: int, lr: float,
    workers: int | None = None,
) -> torch.Tensor:
    """The reference's tasks side by side: `workers` Python threads (default: torch's thread count),
    each adapting whole tasks with torch at one intra-op thread. Returns the reference's logits at
    one thread, bit for bit, whatever the number of workers: each task's arithmetic is the
    single-threaded reference's, only which thread runs it changes.

    Why: a few-shot task is too small to keep several intra-op threads busy (measured on a 2-core
    CPU, Conv4-32, 32 px: 1-shot 72-77 ms per task on 2 intra-op threads, 54 ms on 2 workers; 5-shot
    125-145 vs 97-100 ms); torch releases the GIL inside its operators, so tasks overlap. torch's
    thread count is process-wide: it is 1 while this runs and restored after. Interrupted (Ctrl-C),
    the tasks not started are cancelled and the running ones (a fraction of a second) finish."""
    # each task deep-copies the template (adapted_copy), so the threads share no module
    out = map_single_threaded(lambda t: _adapted_task_logits(template, init, batch, t, steps, lr), len(batch),
                              workers, name="fastfree-metatest")
    return torch.stack(out)


def adapted_query_logits_batched(
    template: nn.Module, init: dict[str, torch.Tensor], batch: EpisodeBatch, steps: int, lr: float
) -> torch.Tensor:
    """All tasks of the batch at once: vmap over tasks of a pure SGD inner loop."""

    def support_loss(params, x, y):
        return F.cross_entropy(functional_call(template, params, (x,)), y)

    def one_task(params, xs, ys, xq):
        for _ in range(steps):
            g = grad(support_loss)(params, xs, ys)
            params = {k: p - lr * g[k] for k, p in params.items()}
        return functional_call(template, params, (xq,))

    return vmap(one_task)(init, batch.support, batch.support_labels, batch.query).detach()


def query_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task accuracy [T] from logits [T, Q, ways] and labels [T, Q]."""
    return (logits.argmax(-1) == labels).double().mean(-1)
