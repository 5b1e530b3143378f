"""Cross-task replay, fast: the MAML meta-batch for all tasks at once with torch.func.

Same contract and values as the sequential oracle ``fastfree.free.replay.maml_meta_batch_reference``
(tested against it in float64): the outer loss is the SUM over tasks of the query
cross-entropy at the adapted parameters, each task adapted by `inner_steps` plain SGD steps
on its support cross-entropy (second order, or first order = FOMAML, the inner gradients
detached). BatchNorm uses batch statistics (as ``functional_template``), so the support forward
normalises with support statistics and the query forward with query statistics.

Structure: ``torch.func.grad`` (of the summed outer loss, with the loss and accuracy as aux)
over a ``vmap`` over tasks of a pure inner loop (itself ``torch.func.grad`` steps). The
pure part, ``meta_batch_loss_and_grads``, is a function of (params dict, tensors) only: no
host reads, no module state, so it can later be wrapped by torch.compile / CUDA graphs.

BatchNorm under vmap, second order: the template (``replay_template``) runs each BatchNorm as the
native normalisation without affine, then the affine map written out
(``fastfree.engine.batchnorm``: the vmapped double backward of the native kernel with a batched
affine weight is silently wrong).

First order under torch.func: the inner gradient is taken at *detached* adapted
parameters. Its value equals the inner gradient at the adapted parameters, and it carries no
dependence on the outer parameters (exactly the reference's ``g.detach()``), without first
building the outer-level graph of the inner backward only to cut it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fastfree.data.episodes import EpisodeBatch
from fastfree.data.split import Normalization
from fastfree.engine.batchnorm import affine_outside_batchnorm_
from fastfree.free.replay import ReplayConfig, _trainable, normalized_tasks, summed_over_tasks, task_outer_gradient
from fastfree.metatest.adapt import functional_template
from fastfree.threads import map_single_threaded


def replay_template(learner: nn.Module) -> nn.Module:
    """``functional_template(learner)`` with every BatchNorm as native normalisation + explicit affine.

    Same parameter names and forward values as ``functional_template`` (BatchNorm with the
    batch's statistics, no running statistics), and safe under vmap of second-order grad.
    """
    return affine_outside_batchnorm_(functional_template(learner))


def meta_batch_loss_and_grads(
    template: nn.Module, params: dict[str, torch.Tensor], support: torch.Tensor, support_labels: torch.Tensor,
    query: torch.Tensor, query_labels: torch.Tensor, inner_steps: int, inner_lr: float, second_order: bool,
    chunk_size: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The pure MAML meta-batch: (grads of the summed outer loss by name, summed outer loss, mean accuracy).

    template: a module with no running statistics whose BatchNorm layers are safe under vmap
    (``replay_template``), run with ``functional_call``; params: the parameters to
    differentiate (plain tensors, not requiring grad; any others come from the template);
    support [T, n_s, C, H, W] and query [T, n_q, C, H, W] already normalised, in the params'
    dtype; labels [T, n_s] / [T, n_q]. The accuracy is the mean over tasks of each task's
    query accuracy, in float64. chunk_size is passed to vmap (None: all tasks in one vmap).
    """

    def support_loss(p, xs, ys):
        return F.cross_entropy(functional_call(template, p, (xs,)), ys)

    inner_grad = grad(support_loss)

    def one_task(p, xs, ys, xq, yq):
        fast = p
        for _ in range(inner_steps):
            if second_order:
                g = inner_grad(fast, xs, ys)
            else:  # FOMAML: the gradient's value at the adapted parameters, no path back to p
                g = inner_grad({k: v.detach() for k, v in fast.items()}, xs, ys)
            fast = {k: fast[k] - inner_lr * g[k] for k in fast}
        logits = functional_call(template, fast, (xq,))
        loss = F.cross_entropy(logits, yq)
        accuracy = (logits.argmax(-1) == yq).to(torch.float64).mean()
        return loss, accuracy

    batched = vmap(one_task, in_dims=(None, 0, 0, 0, 0), chunk_size=chunk_size)

    def outer(p):
        losses, accuracies = batched(p, support, support_labels, query, query_labels)
        total = losses.sum()
        return total, (total, accuracies.mean())

    grads, (total, accuracy) = grad(outer, has_aux=True)(params)
    return grads, total.detach(), accuracy


def maml_meta_batch_fast(
    learner: nn.Module, batch: EpisodeBatch, normalization: Normalization, cfg: ReplayConfig,
    chunk_size: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Drop-in for ``maml_meta_batch_reference`` (same arguments, same returns), all tasks at once.

    Returns (gradient of the summed outer loss w.r.t. the learner's trainable parameters by
    name, the summed outer loss (0-d, detached), the mean query accuracy over the tasks (0-d,
    float64)). The learner is not modified (no .grad, no running statistics); nothing is
    read back to the host. chunk_size: vmap's (None = all tasks in one vmap).
    """
    params = {n: p.detach() for n, p in _trainable(learner).items()}
    dtype = next(iter(params.values())).dtype
    template = replay_template(learner)
    support = normalization.unit(batch.support.to(dtype))
    query = normalization.unit(batch.query.to(dtype))
    return meta_batch_loss_and_grads(template, params, support, batch.support_labels, query, batch.query_labels,
                                     cfg.inner_steps, cfg.inner_lr, cfg.second_order, chunk_size)


def maml_meta_batch_threaded(
    learner: nn.Module, batch: EpisodeBatch, normalization: Normalization, cfg: ReplayConfig,
    workers: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Drop-in for ``maml_meta_batch_reference``: its tasks side by side in `workers` Python threads
    (default: torch's thread count), torch at one intra-op thread in each (fastfree.threads), the
    tasks' gradients summed in task order. Equals the reference at one thread bit for bit, whatever
    the number of workers; with one thread it is the reference. The engine's replay on a CPU: one
    task's second-order MAML is too small for two intra-op threads (measured on a 2-core CPU against
    the reference at 2 threads: 1.26x for the authors' 10 tasks, 1.12x for the demo's 4)."""
    params = _trainable(learner)
    base = functional_template(learner)  # only copied: functional_call swaps a module's parameters in place
    support, query = normalized_tasks(batch, params, normalization)

    def one(t: int):
        return task_outer_gradient(copy.deepcopy(base), params, batch, support, query, t, cfg)

    return summed_over_tasks(params, map_single_threaded(one, len(batch), workers, name="fastfree-replay"))


class GraphedMetaBatch:
    """``maml_meta_batch_fast`` captured in one CUDA graph (the engine's replay with --cuda-graphs).

    A drop-in ``meta_batch_fn``: the first call builds the template and captures the pure
    meta-batch (normalisation, the vmapped inner loops, the second-order outer gradient) for
    the replay configuration's fixed shapes; every later call copies the learner's current
    parameters and the new tasks into the graph's static inputs and replays it (one launch
    instead of hundreds; the notes' prototype: 112 ms -> 20.5 ms on an H200). The outputs are
    cloned, because the next replay overwrites the graph's buffers. If the capture itself fails
    (a RuntimeError from CUDA or torch while recording), it warns once and runs eagerly from
    then on, with the same values; `fallback` holds the reason (fastfree.engine.graphs).
    """

    def __init__(self, warmup: int = 3):
        from fastfree.engine.graphs import GraphedCallable

        self._graphed = GraphedCallable(self._pure, warmup=warmup, name="the replay meta-batch")
        self._template: nn.Module | None = None
        self._constants: tuple | None = None
        self._norm: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def fallback(self) -> str | None:
        """Why capture failed, when it did (then every call runs eagerly)."""
        return self._graphed.fallback

    def _pure(self, params, support, support_labels, query, query_labels, mean, std):
        inner_steps, inner_lr, second_order = self._constants
        return meta_batch_loss_and_grads(self._template, params, (support - mean) / std, support_labels,
                                         (query - mean) / std, query_labels, inner_steps, inner_lr, second_order)

    @property
    def replays(self) -> int:
        return self._graphed.replays

    def __call__(self, learner: nn.Module, batch: EpisodeBatch, normalization: Normalization,
                 cfg: ReplayConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        params = {n: p.detach() for n, p in _trainable(learner).items()}
        dtype = next(iter(params.values())).dtype
        constants = (cfg.inner_steps, cfg.inner_lr, cfg.second_order)
        if self._template is None:
            self._template, self._constants = replay_template(learner), constants
        elif constants != self._constants:
            from fastfree.errors import FastFreeError

            raise FastFreeError("the CUDA-graphed replay was captured for another inner loop (steps, lr, order); "
                                "run with --no-cuda-graphs to change it within a run")
        key = (normalization.mean, normalization.std, dtype, batch.support.device)
        if key not in self._norm:  # made once: a host-to-device copy per call would synchronise
            self._norm[key] = normalization.tensors(batch.support.device, dtype)
        mean, std = self._norm[key]
        args = (params, batch.support.to(dtype), batch.support_labels, batch.query.to(dtype), batch.query_labels,
                mean, std)
        # a failed capture warns once and runs eagerly from then on (GraphedCallable); clones either way
        grads, loss, accuracy = self._graphed(*args)
        return {k: v.clone() for k, v in grads.items()}, loss.clone(), accuracy.clone()
