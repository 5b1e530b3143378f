"""Shapes and parameter counts of every model, counted by hand from the architecture."""

import pytest
import torch

from fastfree.errors import FastFreeError
from fastfree.models import BatchNorm2d, Conv4, Generator, build_model, count_parameters


def conv4_params(width: int, classes: int, side: int) -> int:
    conv = 3 * width * 9 + width + 3 * (width * width * 9 + width)
    bn = 4 * 2 * width
    return conv + bn + width * side * side * classes + classes


@pytest.mark.parametrize("image_size, side", [(32, 2), (84, 5)])
@pytest.mark.parametrize("width", [32, 64])
def test_conv4_shape_and_parameters(image_size, side, width):
    model = Conv4(num_classes=5, width=width, image_size=image_size)
    assert count_parameters(model) == conv4_params(width, 5, side)
    assert model(torch.randn(3, 3, image_size, image_size)).shape == (3, 5)


def test_conv4_32_filter_count_matches_hand_count():
    # 896 + 3 * 9248 (convs) + 256 (BN) + 645 (head) at 32 px
    assert count_parameters(Conv4()) == 29541


@pytest.mark.parametrize(
    "arch, params",
    # 10-class CIFAR-style ResNets (3x3 stride-1 stem, no max-pool): the well-known counts
    [("resnet18", 11_173_962), ("resnet50", 23_520_842), ("resnet10", 4_903_242)],
)
def test_resnet_parameters(arch, params):
    assert count_parameters(build_model(arch, num_classes=10)) == params


@pytest.mark.parametrize("arch", ["resnet10", "resnet18", "resnet50"])
@pytest.mark.parametrize("image_size", [32, 84])
def test_resnet_shapes(arch, image_size):
    model = build_model(arch, num_classes=5, image_size=image_size).eval()
    assert model(torch.randn(2, 3, image_size, image_size)).shape == (2, 5)
    # the stem keeps full resolution (no stride, no max-pool)
    assert model.conv1.stride == (1, 1) and not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("image_size", [32, 84])
def test_generator_table6(image_size):
    g = Generator(latent_dim=256, ngf=64, image_size=image_size)
    s4 = image_size // 4
    fc = 256 * 128 * s4 * s4 + 128 * s4 * s4
    expected = fc + 2 * 128 + 128 * 128 * 9 + 2 * 128 + 128 * 64 * 9 + 2 * 64 + 64 * 3 * 9 + 3
    assert count_parameters(g) == expected
    x = g(torch.randn(7, 256))
    assert x.shape == (7, 3, image_size, image_size)
    assert 0 <= x.min() and x.max() <= 1
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.bias is None for c in convs] == [True, True, False]
    assert all(not bn.track_running_stats for bn in g.modules() if isinstance(bn, torch.nn.BatchNorm2d))


def test_generator_rejects_bad_size():
    with pytest.raises(FastFreeError, match="multiple of 4"):
        Generator(image_size=30)


def test_unknown_architecture_names_choices():
    with pytest.raises(FastFreeError, match="conv4"):
        build_model("vgg16")


def test_batchnorm_eval_equals_torch():
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(6).double(), torch.nn.BatchNorm2d(6).double()
    for bn in (ours, ref):
        bn.running_mean.copy_(torch.arange(6.0)); bn.running_var.copy_(torch.linspace(0.5, 2, 6))
        bn.weight.data.copy_(torch.linspace(-1, 1, 6)); bn.bias.data.fill_(0.3)
        bn.eval()
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    assert list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("arch", ["conv4", "resnet10"])
def test_authors_initialisation(arch):
    torch.manual_seed(0)
    model = build_model(arch)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 5000)
    expected = (2.0 / (9 * conv.out_channels)) ** 0.5
    assert abs(conv.weight.std().item() / expected - 1) < 0.05
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
