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
from fastfree.layout import cpu_layout
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
CHUNK = 512  # images per forward pass when predicting: bounds memory for large query sets


class _Moments:
    """Per-channel count, mean and sum of squared deviations over batches (Chan et al.'s pairwise
    update, float64), so a batch's statistics can be gathered a chunk at a time."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        dims = [0, *range(2, x.dim())]
        x = x.double()
        n = x.numel() // x.shape[1]
        mean = x.mean(dims)
        m2 = ((x - mean.view(1, -1, *[1] * (x.dim() - 2))) ** 2).sum(dims)
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.n * n / total)
        self.n = total

    def mean_var(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.to(dtype), (self.m2 / self.n).to(dtype)  # biased, as training-mode BatchNorm uses


class _Measured(Exception):
    """Stops a forward pass once the layer being measured has seen its input."""


def _forward_order(model: nn.Module, probe: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _: order.append(mod))
             for m in model.modules() if isinstance(m, _BatchNorm)]
    try:
        model(probe)
    finally:
        for h in hooks:
            h.remove()
    return order


@torch.no_grad()
def on_batch_statistics(model: nn.Module, images: torch.Tensor, chunk: int = CHUNK) -> nn.Module:
    """A copy of `model` whose BatchNorm layers normalise every input with the statistics `images`
    get as one batch in training mode (per layer, the mean and biased variance), so any input is
    then predicted on its own. More images than `chunk` pass `chunk` at a time, once per layer in
    forward order (a layer's statistics depend on the earlier layers'), so memory stays a chunk's;
    the statistics are the whole batch's up to rounding (tested)."""
    model = copy.deepcopy(model).train()
    for layer in _forward_order(model, images[:chunk]):
        moments = _Moments()

        def measure(module, inputs, moments=moments):
            moments.add(inputs[0])
            raise _Measured

        hook = layer.register_forward_pre_hook(measure)
        try:
            for s in range(0, len(images), chunk):
                try:
                    model(images[s:s + chunk])
                except _Measured:
                    pass
        finally:
            hook.remove()
        layer.running_mean, layer.running_var = moments.mean_var(images.dtype)
        layer.track_running_stats = True
        layer.eval()  # the later layers' passes see this one normalised with the whole batch's statistics
    return model.eval()


def adapted_probabilities(init: Initialization, support: torch.Tensor, support_labels: torch.Tensor,
                          query: torch.Tensor, steps: int, lr: float, bn_stats: str = "query",
                          chunk: int = CHUNK) -> torch.Tensor:
    """Class probabilities [Q, ways] of the query images after adapting on the support set.

    `support` / `query`: normalised float [N, 3, S, S]; `support_labels`: [N] in 0..ways-1;
    `bn_stats`: whose BatchNorm statistics the prediction uses (module docstring); `chunk`: query
    images per forward pass (a larger query set under "query" gets its statistics a chunk at a time)."""
    if bn_stats not in BN_STATS:
        raise FastFreeError(f"unknown BatchNorm statistics {bn_stats!r}: use one of {', '.join(BN_STATS)}")
    if chunk < 1:
        raise FastFreeError(f"chunk must be a positive number of images, got {chunk}")
    ways = int(support_labels.max()) + 1
    head = [p for _, p in init.template.named_parameters()][-1]
    if head.shape[0] != ways:
        raise FastFreeError(f"the initialisation has {head.shape[0]} outputs for a {ways}-class task")
    support = cpu_layout(support)  # as the meta-test adapts and predicts (the query set a chunk at a time)
    params = {k: v[0] for k, v in init.for_tasks([0], support.device, support.dtype).items()}
    template = copy.deepcopy(init.template).to(support.device, support.dtype)  # load_state_dict keeps its dtype
    model = adapted_copy(template, params, support, support_labels, steps, lr)
    with torch.no_grad():
        if bn_stats == "query" and len(query) <= chunk:
            return model(cpu_layout(query)).softmax(-1)  # the meta-test's own forward: one batch, training-mode BN
        frozen = on_batch_statistics(model, support if bn_stats == "support" else query, chunk)
        return torch.cat([frozen(cpu_layout(query[s:s + chunk])) for s in range(0, len(query), chunk)]).softmax(-1)


__all__ = ["BN_STATS", "CHUNK", "adapted_probabilities", "head_for_ways", "nearest_shots", "on_batch_statistics"]
