"""Deterministic invariants of the hot paths, asserted as ordinary tests (no timing).

- FLOPs per FIVE epoch: the fast engine (loop or vmap) does exactly the reference's work, and
  that work is the committed count (a change means the algorithm's cost changed: extra
  forwards, a lost `no_grad`, ...); with the generator's upsampling fused (the default), exactly
  5/9 of its two upsampled convolutions' FLOPs less.
- Launches: the vmapped FIVE epoch dispatches the same number of operations whatever the number
  of teachers b (one batched launch per operation), while the reference's grows with b.
- Graph breaks and recompiles of the compiled epoch are asserted in tests/engine/test_five.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastfree.data.split import CIFAR100_NORM
from fastfree.engine.augment import draw_table
from fastfree.engine.five import FastFive
from fastfree.engine.options import EngineOptions
from fastfree.engine.teachers import StackedTeachers
from fastfree.free.five import FiveConfig, five_reference, task_labels
from fastfree.profiling.flops import GlobalFlopCounter, conv_backward_flops
from tests.benchmarks.workloads import FiveWorkload
from tests.free.helpers import tiny_models

# FiveWorkload: b=2, k=2, 20 codes, generator ngf 8, Conv4-8 teachers and learner at 16 px
FIVE_EPOCH_FLOPS = 438_239_360


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _flops(fn) -> int:
    with GlobalFlopCounter() as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
def test_five_epoch_flops_equal_the_reference_and_the_committed_count(vectorize):
    w = FiveWorkload(vectorize=vectorize, fuse_upsample=False)
    assert _flops(w.reference) == FIVE_EPOCH_FLOPS
    assert _flops(w.fast_epoch) == FIVE_EPOCH_FLOPS


def _upsampled_convolution_flops(w: FiveWorkload) -> int:
    """FLOPs of the generator's two upsample-then-convolve layers in one epoch, as written: each of the
    b (k + 1) generator passes runs them forward and backward (input and weight gradients: 3 forwards)."""
    n, side = w.z.shape[1], w.gen.init_size
    convs = [m for m in w.gen.modules() if isinstance(m, torch.nn.Conv2d)][:2]
    per_pass = sum(2 * n * (2 * side * 2 ** i) ** 2 * c.in_channels * c.out_channels * 9 for i, c in enumerate(convs))
    return w.z.shape[0] * (w.cfg.k + 1) * 3 * per_pass


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
def test_the_fused_upsampling_saves_five_ninths_of_the_upsampled_convolutions(vectorize):
    w = FiveWorkload(vectorize=vectorize)
    saved = _upsampled_convolution_flops(w) * 5 // 9
    assert saved > 0.25 * FIVE_EPOCH_FLOPS  # a quarter of this tiny epoch; most of it at ngf 64 (issue 4's)
    assert _flops(w.fast_epoch) == FIVE_EPOCH_FLOPS - saved


def test_grouped_convolution_backward_is_counted_like_separate_convolutions():
    """torch's formula counts a grouped weight gradient `groups` times; ours does not."""
    x = torch.randn(4, 8, 8, 8, requires_grad=True)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    grouped = _flops(lambda: torch.nn.functional.conv2d(x, w, padding=1, groups=2).sum().backward())
    split = _flops(lambda: [torch.nn.functional.conv2d(x[:, 4 * i:4 * i + 4], w[4 * i:4 * i + 4], padding=1)
                            .sum().backward() for i in range(2)])
    assert grouped == split
    # the formula itself: input and weight gradients each cost one forward
    assert conv_backward_flops([4, 8, 8, 8], [4, 8, 8, 8], [8, 4, 3, 3], None, 1, 1, 1, False, 0, 2,
                               [True, True, False]) == 2 * (2 * 4 * 64 * 8 * 4 * 9)


def _epoch_ops(b: int, vectorize: bool | None) -> int:
    cfg = FiveConfig(k=2, images_per_class=2)
    gen, ts, learner = tiny_models(teachers=b)
    ids = list(range(b))
    labels = task_labels(5, cfg.images_per_class)
    if vectorize is None:
        def run():
            five_reference(gen, ts, ids, learner, CIFAR100_NORM, cfg, True, torch.Generator().manual_seed(0))
    else:
        five = FastFive(gen, StackedTeachers(ts), learner, CIFAR100_NORM, cfg,
                        EngineOptions.for_device(torch.device("cpu"), vectorize=vectorize), torch.device("cpu"))
        z = torch.randn(b, 10, gen.latent_dim, dtype=torch.float64)
        draws = draw_table(b, cfg.k + 1, cfg.pad, torch.Generator().manual_seed(0))

        def run():
            five(dict(gen.named_parameters()), z, torch.tensor(ids), draws, dict(learner.named_parameters()), labels,
                 True)
    run()  # first call builds caches
    with OpCount() as count:
        run()
    return count.ops


def test_vmapped_epoch_launches_do_not_grow_with_the_number_of_teachers():
    # b >= 2 on both sides: with b=1 some of vmap's reshapes of the batched tensors are views,
    # with b > 1 they are copies (a fixed number, whatever b)
    vmap = [_epoch_ops(b, True) for b in (2, 4)]
    reference = [_epoch_ops(b, None) for b in (2, 4)]
    assert vmap[0] == vmap[1]
    assert reference[1] > 1.8 * reference[0]
    assert vmap[1] < reference[1] / 1.5
