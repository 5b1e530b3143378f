"""The fast engine with the fused kernels (on CPU: the Triton interpreter, fp32) equals it with the torch losses."""

import copy

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM as NORM
from fastfree.engine.augment import draw_table
from fastfree.engine.bell import bell_fast
from fastfree.engine.five import FastFive
from fastfree.engine.options import EngineOptions
from fastfree.engine.teachers import StackedTeachers
from fastfree.free.bell import BellConfig
from fastfree.free.five import FiveConfig, task_labels
from fastfree.kernels import _dispatch
from fastfree.kernels import reference as torch_impl
from tests.engine.test_five import _setup


@pytest.fixture(autouse=True)
def _the_kernels_must_run(monkeypatch):
    """The kernels fall back to their torch path where they cannot launch; these comparisons would then
    be torch against torch. The engine's own torch losses (kernels=False) never call that path."""
    if not (_dispatch.INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it) or a GPU")

    def fail(*args, **kwargs):
        raise AssertionError("the kernels' torch fallback ran instead of the kernel")

    monkeypatch.setattr(torch_impl, "inversion_rows", fail)
    monkeypatch.setattr(torch_impl, "kl_rows", fail)


def _float32():
    gen, ts, learner = _setup()
    return gen.float(), [t.float() for t in ts], learner.float()


def test_five_with_the_kernels_equals_five_with_torch_losses():
    gen, ts, learner = _float32()
    cfg = FiveConfig(k=0, lr=0.01, images_per_class=4)  # k=0: no Adam step to amplify fp32 rounding
    runs = []
    for kernels in (False, True):
        latent = torch.Generator().manual_seed(2)
        z = torch.stack([torch.randn(20, 8, generator=latent) for _ in range(3)])
        five = FastFive(gen, StackedTeachers(ts), learner, NORM, cfg, EngineOptions(vectorize=True, kernels=kernels),
                        torch.device("cpu"))
        runs.append(five(dict(gen.named_parameters()), z, torch.tensor([2, 0, 2]),
                         draw_table(3, 1, 4, torch.Generator().manual_seed(1)), dict(learner.named_parameters()),
                         task_labels(5, 4), True))
    torch_run, kernel_run = runs
    assert 0 < kernel_run.eta.mean() < 1
    torch.testing.assert_close(kernel_run.loss, torch_run.loss, rtol=1e-5, atol=1e-6)
    for n in torch_run.meta_grad:
        torch.testing.assert_close(kernel_run.meta_grad[n], torch_run.meta_grad[n], rtol=1e-4, atol=1e-6, msg=n)


def test_bell_with_the_kernels_equals_bell_with_torch_losses():
    _, ts, learner = _float32()
    stack = StackedTeachers(ts)
    images = torch.rand(3, 10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(5).repeat_interleave(2)
    cfg = BellConfig(inner_optimizer="sgd", inner_lr=0.1, epsilon=0.5)
    learners = [copy.deepcopy(learner) for _ in range(2)]
    losses = [bell_fast(m, images, labels, stack.gather(torch.tensor([2, 0, 2])), stack, NORM, cfg,
                        EngineOptions(kernels=k)) for m, k in zip(learners, (False, True))]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for p, q in zip(*(m.parameters() for m in learners)):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_bell_erm_with_the_kernels_equals_it_with_torch_losses():
    """--learner-update erm maps its loss with vmap and then calls backward: with the kernels it stopped
    ("element 0 of tensors does not require grad") before the losses attached their gradient under vmap."""
    _, ts, learner = _float32()
    learner.requires_grad_(True)  # a copy of a frozen teacher
    stack = StackedTeachers(ts)
    images = torch.rand(3, 10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(5).repeat_interleave(2)
    learners = [copy.deepcopy(learner) for _ in range(2)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in learners]
    losses = [bell_fast(m, images, labels, stack.gather(torch.tensor([2, 0, 2])), stack, NORM, BellConfig(mode="erm"),
                        EngineOptions(kernels=k), o) for m, k, o in zip(learners, (False, True), opts)]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    moved = [any(not torch.equal(p, q) for p, q in zip(m.parameters(), learner.parameters())) for m in learners]
    assert moved == [True, True]
    for p, q in zip(*(m.parameters() for m in learners)):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
