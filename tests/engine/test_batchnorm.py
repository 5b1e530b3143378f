"""BatchNorm with its affine map outside the native kernel: the generator's and replay's template."""

import copy

import pytest
import torch
from torch.func import functional_call

from fastfree.engine.batchnorm import BatchNormThenAffine, affine_outside_batchnorm_
from fastfree.models import Conv4, Generator


def _generator() -> Generator:
    torch.manual_seed(0)
    gen = Generator(latent_dim=8, ngf=4, image_size=16).double()
    with torch.no_grad():  # non-trivial affine parameters
        for m in gen.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return gen


def test_same_names_and_values_as_the_native_layers():
    gen = _generator()
    template = affine_outside_batchnorm_(copy.deepcopy(gen))
    assert [n for n, _ in template.named_parameters()] == [n for n, _ in gen.named_parameters()]
    assert sum(isinstance(m, BatchNormThenAffine) for m in template.modules()) == 3
    z = torch.randn(6, 8, dtype=torch.float64)
    params = dict(gen.named_parameters())
    torch.testing.assert_close(functional_call(template, params, (z,)), gen(z), rtol=1e-12, atol=1e-13)


def test_bf16_activations_stay_bf16_as_with_the_native_layers():
    """A float32 affine weight must not promote the activations after a BatchNorm to float32."""
    gen = _generator().float()
    template = affine_outside_batchnorm_(copy.deepcopy(gen))
    dtypes = {}
    for name, model in (("native", gen), ("outside", template)):
        seen = []
        hooks = [m.register_forward_hook(lambda mod, i, o, seen=seen: seen.append(o.dtype)) for m in model.body]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(6, 8))
        for h in hooks:
            h.remove()
        dtypes[name] = seen
    assert dtypes["outside"] == dtypes["native"] and set(dtypes["outside"]) == {torch.bfloat16}


def test_layers_that_keep_running_statistics_are_refused():
    with pytest.raises(ValueError, match="running"):
        affine_outside_batchnorm_(Conv4(num_classes=5, width=4, image_size=16))
