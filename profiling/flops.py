"""Counting operations of one image: thop's rules (the paper's Table 1) and FlopCounterMode.

Two counters, both on the meta device (shapes only: ResNet-50 at 224 px counts in
milliseconds, no memory, no arithmetic):

- `thop_macs`: multiply-accumulates of one forward pass under the per-layer rules of thop
  (Lyken17/pytorch-OpCounter, the `thop` package the authors used; rules of its release
  0.1.1.post2209072238), re-implemented with forward hooks so that thop is not a
  dependency. Checked once against that thop release: the same integer MACs for the nine
  models of Table 1. The rules followed, per layer type:
    * `nn.Conv2d` -- `count_convNd` (thop/vision/basic_hooks.py) ->
      `calculate_conv2d_flops` (thop/vision/calc_func.py): numel(output) x (C_in / groups)
      x k_h x k_w. The bias is NOT counted (the authors' ResNet-50 has a bias on every
      bottleneck's 3x3 convolution: counting it would give 128.39 at 224 px, not 128.34).
    * `nn.BatchNorm2d` -- `count_normalization` -> `calculate_norm`: 2 x numel(input),
      doubled when affine, so 4 x numel(input) here (in eval mode, as thop runs the model).
    * `nn.ReLU`, `nn.MaxPool2d` -- `zero_ops` (thop/profile.py's `register_hooks`).
    * `nn.AdaptiveAvgPool2d` -- `count_adap_avgpool` -> `calculate_adaptive_avg`:
      (prod(input side / output side) + 1) x numel(output).
    * `nn.Linear` -- `count_linear` -> `calculate_linear`: in_features x numel(output).
    * the authors' `Flatten` and containers: no rule, zero (thop warns and counts zero).
  Residual additions are tensor operations, not modules: thop does not see them.
  thop's traversal is emulated too: `thop.profile` registers its hooks with
  `model.apply` and sums with `dfs_count`, both of which walk `children()`, which is
  de-duplicated only within one parent. A layer registered under two parents (the
  authors' Conv-4 keeps each block's layers as attributes and inside a `trunk`
  Sequential) gets k hooks and is summed k times when it is reached by k routes: its
  count is multiplied by k^2. `ThopCount.macs` counts every layer once (the convention);
  `ThopCount.macs_as_run` reproduces what thop printed for the authors.
- `flop_counter_flops`: `torch.utils.flop_counter.FlopCounterMode` over one image's forward
  pass, or forward + backward. It counts matrix multiplications and convolutions only
  (2 FLOPs per multiply-accumulate, convolution biases ignored); BatchNorm, activations,
  pooling and the loss are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

META = torch.device("meta")


def _conv(m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> int:
    # thop count_convNd / calculate_conv2d_flops: bias ignored
    return y.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _norm(m: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, y: torch.Tensor) -> int:
    # thop count_normalization / calculate_norm: 2 x numel, x 2 when affine
    return 2 * x.numel() * (2 if m.affine else 1)


def _adaptive_avg(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    # thop count_adap_avgpool / calculate_adaptive_avg: (kernel adds + 1 division) per output
    kernel = math.prod(i / o for i, o in zip(x.shape[2:], y.shape[2:]))
    return int((kernel + 1) * y.numel())


def _linear(m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> int:
    # thop count_linear / calculate_linear: one multiply-accumulate per input feature and output
    return m.in_features * y.numel()


def _zero(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    # thop zero_ops (ReLU, max-pooling, dropout, padding)
    return 0


THOP_RULES = {
    nn.Conv2d: _conv,
    nn.BatchNorm2d: _norm,
    nn.ReLU: _zero,
    nn.MaxPool2d: _zero,
    nn.Dropout: _zero,
    nn.AdaptiveAvgPool2d: _adaptive_avg,
    nn.Linear: _linear,
}
# leaf modules thop has no rule for and therefore counts as zero (it prints a warning)
NO_RULE = (nn.Flatten, nn.Identity)


@dataclass
class ThopCount:
    """Multiply-accumulates of one forward pass under thop's rules."""

    macs: int  # every layer once: the convention
    macs_as_run: int  # with thop's multiple counting of layers reachable by several routes
    by_type: dict[str, int] = field(default_factory=dict)  # convention, per layer type


def _routes(model: nn.Module) -> dict[nn.Module, int]:
    """How many routes through `children()` reach each module (thop's apply and dfs_count)."""
    routes: dict[nn.Module, int] = {}

    def walk(m: nn.Module) -> None:
        routes[m] = routes.get(m, 0) + 1
        for child in m.children():
            walk(child)

    walk(model)
    return routes


def thop_macs(model: nn.Module, image_size: int, channels: int = 3) -> ThopCount:
    """thop-style MACs of one image (batch 1) through `model`; moves `model` to the meta device."""
    model = model.to(META).eval()
    ops: dict[nn.Module, int] = {}
    handles = []
    for m in model.modules():
        if next(m.children(), None) is not None:
            continue  # containers: thop's rules are per leaf layer
        # thop looks up the exact type; a subclass (fastfree's BatchNorm2d) takes its base's rule here
        rule = next((THOP_RULES[t] for t in type(m).__mro__ if t in THOP_RULES), None)
        if rule is None:
            if not isinstance(m, NO_RULE) and type(m).__name__ != "Flatten":
                raise TypeError(f"no thop rule for {type(m).__name__}: add one to THOP_RULES")
            continue

        def hook(mod, inputs, output, rule=rule):
            ops[mod] = ops.get(mod, 0) + rule(mod, inputs[0], output)

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.empty(1, channels, image_size, image_size, device=META))
    finally:
        for h in handles:
            h.remove()
    routes = _routes(model)
    by_type: dict[str, int] = {}
    for m, n in ops.items():
        by_type[type(m).__name__] = by_type.get(type(m).__name__, 0) + n
    return ThopCount(
        macs=sum(ops.values()),
        macs_as_run=sum(n * routes[m] ** 2 for m, n in ops.items()),
        by_type=by_type,
    )


def flop_counter_flops(model: nn.Module, image_size: int, backward: str = "none", channels: int = 3) -> int:
    """FlopCounterMode FLOPs of one image (batch 1); moves `model` to the meta device.

    backward: "none" (forward only), "all" (forward + backward to the weights and the image:
    a training step's gradient) or "input" (forward + backward to the image only, the
    weights frozen: a teacher in model inversion).
    """
    if backward not in ("none", "all", "input"):
        raise ValueError(f"backward must be none, all or input, got {backward!r}")
    model = model.to(META).eval()
    for p in model.parameters():
        p.requires_grad_(backward == "all")
    x = torch.empty(1, channels, image_size, image_size, device=META, requires_grad=backward != "none")
    counter = FlopCounterMode(display=False)
    with counter:
        if backward == "none":
            with torch.no_grad():
                model(x)
        else:
            model(x).sum().backward()
    return counter.get_total_flops()


__all__ = ["NO_RULE", "THOP_RULES", "ThopCount", "flop_counter_flops", "thop_macs"]


class _GlobalOnly:
    """A stand-in for FlopCounterMode's ModuleTracker: everything counts under "Global"."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None) -> int:
    """FLOPs of aten.convolution_backward, right for grouped convolutions.

    torch's formula (2.11-2.13) counts a grouped convolution's weight gradient `groups` times
    too high (it takes the whole input's channels as one group). That matters here: under vmap
    every stacked model's convolution becomes one grouped convolution (groups = models), so the
    fast engine would seem to do more work than the reference. Each gradient, input's or
    weight's, costs what the forward convolution costs: 2 x N x (spatial positions of the
    output, or of the input for a transposed convolution) x w[0] x w[1] x kernel size, where
    w is (C_out, C_in / groups, k...) (transposed: (C_in, C_out / groups, k...)).
    """
    spatial = x_shape[2:] if transposed else grad_out_shape[2:]
    forward = 2 * grad_out_shape[0] * math.prod(spatial) * w_shape[0] * w_shape[1] * math.prod(w_shape[2:])
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


class GlobalFlopCounter(FlopCounterMode):
    """FlopCounterMode without its per-module breakdown, for code that uses torch.func.

    FlopCounterMode's ModuleTracker puts multi-grad hooks on module outputs; under
    torch.func.grad (FIVE's inner steps, functional replay) autograd.grad then fails with "A
    leaf node was passed to _will_engine_execute_node". The counting itself (a dispatch mode
    and the same FLOP registry, including the fused kernels' registered formulas) is unchanged;
    only the per-module table is lost, which the phase profiler does not use. Grouped
    convolutions' backward is counted by `conv_backward_flops` (torch's formula overcounts it).
    """

    def __init__(self):
        super().__init__(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
        self.mod_tracker = _GlobalOnly()
