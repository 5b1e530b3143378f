"""BatchNorm folding is exact (float64) and leaves no BatchNorm in the teachers."""

import warnings

import pytest
import torch
from torch.func import functional_call, vmap

from fastfree.engine.fold import fold_batchnorm
from fastfree.models import build_model


def _teacher(arch, seed, image_size=16):
    torch.manual_seed(seed)
    model = build_model(arch, 5, 8 if arch == "conv4" else 4, image_size).double()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.mark.parametrize("arch", ["conv4", "resnet10", "resnet18", "resnet50"])
def test_folding_is_exact_and_removes_batchnorm(arch):
    model = _teacher(arch, 0)
    folded = fold_batchnorm(model)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_folded_teachers_batch_under_vmap():
    teachers = [fold_batchnorm(_teacher("conv4", s)) for s in range(3)]
    # each GraphModule has its own generated class, so stack by name rather than stack_module_state
    params = {k: torch.stack([dict(t.named_parameters())[k] for t in teachers]) for k, _ in teachers[0].named_parameters()}
    buffers = {k: torch.stack([dict(t.named_buffers())[k] for t in teachers]) for k, _ in teachers[0].named_buffers()}
    template = teachers[0]
    x = torch.randn(3, 4, 3, 16, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no per-model fallback warnings either
        out = vmap(lambda p, b, xi: functional_call(template, (p, b), (xi,)))(params, buffers, x)
    for i, t in enumerate(teachers):
        torch.testing.assert_close(out[i], t(x[i]), rtol=1e-12, atol=1e-12)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(build_model("conv4").train())
