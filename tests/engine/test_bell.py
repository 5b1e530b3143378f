"""Fast BELL (one batched teacher forward, pure inner steps) equals the reference in float64."""

import copy

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM as NORM
from fastfree.engine.bell import bell_fast
from fastfree.engine.options import EngineOptions
from fastfree.engine.teachers import StackedTeachers
from fastfree.errors import FastFreeError
from fastfree.free.bell import BellConfig, bell_reference
from tests.free.helpers import tiny_models
from tests.free.test_bell import _tasks

VARIANTS = {
    "paper": BellConfig(inner_lr=0.05, epsilon=0.3),
    "sgd-inner": BellConfig(inner_optimizer="sgd", inner_lr=0.1, epsilon=0.5),
    "adam-67": BellConfig(inner_lr=0.01, outer="adam"),
    "erm": BellConfig(mode="erm"),
    "hard": BellConfig(targets="hard", inner_lr=0.05, epsilon=0.3),
}


def biases_before_batchnorm(model: torch.nn.Module) -> set[str]:
    """Conv biases that a BatchNorm cancels: their true gradient is 0, the computed one rounding
    noise (~1e-17), which Adam turns into lr-sized steps of arbitrary sign. Two correct
    implementations therefore disagree there, while the functions they compute agree."""
    names = set()
    for prefix, seq in model.named_modules():
        if isinstance(seq, torch.nn.Sequential):
            kids = list(seq.named_children())
            for (name, a), (_, b) in zip(kids, kids[1:]):
                if isinstance(a, torch.nn.Conv2d) and a.bias is not None and isinstance(b, torch.nn.BatchNorm2d):
                    names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


def assert_same_learner(got: torch.nn.Module, want: torch.nn.Module, image_size: int = 16) -> None:
    skip = biases_before_batchnorm(want)
    for (n, p), q in zip(want.named_parameters(), got.parameters()):
        if n not in skip:
            torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=n)
    x = torch.rand(10, 3, image_size, image_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got(x), want(x), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fast_bell_equals_the_reference(name):
    cfg = VARIANTS[name]
    _, teachers, learner = tiny_models(teachers=3)
    ids = [2, 0, 2]
    tasks = _tasks(3)
    ref, fast = copy.deepcopy(learner), copy.deepcopy(learner)
    ref_opt, fast_opt = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ref, fast))
    want = bell_reference(ref, tasks, [teachers[i] for i in ids], NORM, cfg, ref_opt)["losses"]
    stack = StackedTeachers(teachers)
    got = bell_fast(fast, torch.stack([t.images for t in tasks]), tasks[0].labels, stack.gather(torch.tensor(ids)),
                    stack, NORM, cfg, EngineOptions(), fast_opt)
    assert got.tolist() == pytest.approx(want, rel=1e-10)
    assert_same_learner(fast, ref)
    assert all(q.grad is None for q in fast.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(learner.parameters(), fast.parameters()))


def test_fast_bell_refuses_what_the_reference_refuses():
    _, teachers, learner = tiny_models(teachers=1)
    stack = StackedTeachers(teachers)
    x = torch.rand(1, 10, 3, 16, 16, dtype=torch.float64)
    y = torch.arange(5).repeat_interleave(2)
    with pytest.raises(FastFreeError, match="optimiser"):
        bell_fast(learner, x, y, stack.gather(torch.tensor([0])), stack, NORM, BellConfig(outer="adam"),
                  EngineOptions())
    with pytest.raises(FastFreeError, match="no learner update"):
        bell_fast(learner, x, y, stack.gather(torch.tensor([0])), stack, NORM, BellConfig(mode="none"),
                  EngineOptions())
