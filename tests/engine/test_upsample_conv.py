"""Nearest x2 upsampling + 3x3 convolution as one stride-2 transposed convolution (FIVE's generator)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fastfree.engine.upsample_conv import UpsampledConv2d, fuse_upsample_conv_, upsample_conv2d
from fastfree.models import Generator
from fastfree.profiling.flops import GlobalFlopCounter


def _written(x, w, b=None):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (3, 5, 1, 7), (1, 2, 5, 3)], ids=["square", "one-row", "odd"])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_upsample_then_convolve_with_its_gradients_in_float64(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    up = torch.randn(shape[0], 4, 2 * shape[2], 2 * shape[3], dtype=torch.float64)  # upstream gradient
    inputs = [t for t in (x, w, b) if t is not None]
    fused, written = upsample_conv2d(x, w, b), _written(x, w, b)
    assert fused.shape == written.shape
    torch.testing.assert_close(fused, written, rtol=1e-12, atol=1e-12)
    for g_fused, g_written in zip(torch.autograd.grad(fused, inputs, up), torch.autograd.grad(written, inputs, up)):
        torch.testing.assert_close(g_fused, g_written, rtol=1e-12, atol=1e-12)


def test_under_vmap_over_stacked_weights_equals_each_model():
    """FIVE vmaps the generator over b teachers' clones: the fused layer must batch (as a grouped
    transposed convolution) and give each clone's own result and gradient."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 4, 4, dtype=torch.float64)
    w = torch.randn(3, 6, 5, 3, 3, dtype=torch.float64)

    def loss(w_i, x_i, fn):
        return fn(x_i, w_i).square().sum()

    batched = vmap(grad(loss), in_dims=(0, 0, None))(w, x, upsample_conv2d)
    for i in range(3):
        torch.testing.assert_close(batched[i], grad(loss)(w[i], x[i], _written), rtol=1e-12, atol=1e-12)


def test_the_generator_fused_keeps_its_parameters_and_output():
    torch.manual_seed(0)
    gen = Generator(latent_dim=8, ngf=4, image_size=16).double()
    fused = copy.deepcopy(gen)
    assert fuse_upsample_conv_(fused) == 2  # both upsample + convolution pairs of Table 6
    assert sum(isinstance(m, UpsampledConv2d) for m in fused.modules()) == 2
    assert not any(isinstance(m, nn.Upsample) for m in fused.modules())
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in gen.named_parameters()]
    z = torch.randn(6, 8, dtype=torch.float64)
    params = dict(gen.named_parameters())
    torch.testing.assert_close(functional_call(fused, params, (z,)), gen(z), rtol=1e-12, atol=1e-12)


def test_only_nearest_x2_followed_by_a_plain_3x3_convolution_is_fused():
    others = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(2, 2, 3, 1, 1),  # not nearest
        nn.Upsample(scale_factor=3), nn.Conv2d(2, 2, 3, 1, 1),  # not x2
        nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, 2, 1),  # stride 2
        nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 5, 1, 2),  # 5x5
        nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, 1, 1, padding_mode="reflect"),
        nn.Upsample(scale_factor=2), nn.ReLU(), nn.Conv2d(2, 2, 3, 1, 1),  # not adjacent
        nn.Conv2d(2, 2, 3, 1, 1),  # no upsampling before
    )
    assert fuse_upsample_conv_(others) == 0
    assert fuse_upsample_conv_(nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0)), nn.Conv2d(2, 2, 3, 1, 1))) == 1


def test_flops_are_four_ninths_of_upsample_then_convolve():
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    w = torch.randn(6, 8, 3, 3, requires_grad=True)
    counts = []
    for fn in (_written, upsample_conv2d):
        with GlobalFlopCounter() as counter:
            fn(x, w).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[1] * 9 == counts[0] * 4


def test_bf16_autocast_runs_the_fused_convolution_in_bf16():
    torch.manual_seed(0)
    x, w = torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, written = upsample_conv2d(x, w), _written(x, w)
    assert fused.dtype == written.dtype == torch.bfloat16
    # both round their inputs to bf16; the fused kernel also rounds the summed taps
    torch.testing.assert_close(fused.float(), _written(x, w), rtol=0.05, atol=0.1)
