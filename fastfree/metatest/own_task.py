"""One task of one's own, adapted exactly as the meta-test adapts its tasks (`fastfree adapt`).

The meta-learner starts from its weights, takes `steps` plain SGD steps on the support
cross-entropy (`adapted_copy`, the meta-test's own loop) and predicts the query set. BatchNorm
then normalises with statistics of one of two batches:

- "query" (the meta-test protocol behind every accuracy fastfree reports, and the paper's code):
  the query images' own batch statistics, so each prediction depends on the other query images
  (transductive); predicted one image at a time they are far worse (measured in the README);
- "support": the support set's statistics, the ones the adaptation itself trained with, so each
  query image is predicted on its own, alone or in any batch, the same.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fastfree.errors import FastFreeError
from fastfree.metatest.adapt import adapted_copy
from fastfree.metatest.initializations import Initialization

HEAD = ("classifier.weight", "classifier.bias")


def head_for_ways(state: dict[str, torch.Tensor], ways: int) -> dict[str, torch.Tensor]:
    """The learner's weights for a `ways`-class task: its classifier's first `ways` outputs.

    The meta-learner was meta-trained on N-way tasks whose classes took the N outputs in random
    order, so no output belongs to a class and any `ways` of them start a smaller task alike; a
    larger task has outputs the meta-learner never trained."""
    have = int(state[HEAD[0]].shape[0])
    if ways > have:
        raise FastFreeError(f"the task has {ways} classes but the meta-learner was meta-trained on {have}-way tasks "
                            f"(its classifier has {have} outputs): give at most {have} class folders in --support")
    return {k: (v[:ways] if k in HEAD else v) for k, v in state.items()}


def nearest_shots(available, shots: float) -> int | None:
    """The selected learner's shot count nearest to the task's (ties: the smaller); None stays None
    (a single pick for every shot count)."""
    keys = list(available)
    if None in keys:
        return None
    return min(keys, key=lambda k: (abs(k - shots), k))


BN_STATS = ("query", "support")


@torch.no_grad()
def on_support_statistics(model: nn.Module, support: torch.Tensor) -> nn.Module:
    """A copy of `model` whose BatchNorm layers normalise every input with the support set's
    statistics (per layer, the batch mean and biased variance its training-mode forward uses)."""
    model = copy.deepcopy(model).train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, inputs):
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        stats[module] = (x.mean(dims), x.var(dims, unbiased=False))

    hooks = [m.register_forward_pre_hook(record) for m in norms]
    try:
        model(support)
    finally:
        for h in hooks:
            h.remove()
    for m in norms:
        m.running_mean, m.running_var = stats[m]
        m.track_running_stats = True
    return model.eval()


def adapted_probabilities(init: Initialization, support: torch.Tensor, support_labels: torch.Tensor,
                          query: torch.Tensor, steps: int, lr: float, bn_stats: str = "query") -> torch.Tensor:
    """Class probabilities [Q, ways] of the query images after adapting on the support set.

    `support` / `query`: normalised float [N, 3, S, S]; `support_labels`: [N] in 0..ways-1;
    `bn_stats`: whose BatchNorm statistics the prediction uses (module docstring)."""
    if bn_stats not in BN_STATS:
        raise FastFreeError(f"unknown BatchNorm statistics {bn_stats!r}: use one of {', '.join(BN_STATS)}")
    ways = int(support_labels.max()) + 1
    head = [p for _, p in init.template.named_parameters()][-1]
    if head.shape[0] != ways:
        raise FastFreeError(f"the initialisation has {head.shape[0]} outputs for a {ways}-class task")
    params = {k: v[0] for k, v in init.for_tasks([0], support.device, support.dtype).items()}
    template = copy.deepcopy(init.template).to(support.device, support.dtype)  # load_state_dict keeps its dtype
    model = adapted_copy(template, params, support, support_labels, steps, lr)
    if bn_stats == "support":
        model = on_support_statistics(model, support)
    with torch.no_grad():
        return model(query).softmax(-1)


__all__ = ["BN_STATS", "adapted_probabilities", "head_for_ways", "nearest_shots", "on_support_statistics"]
