"""fastfree.layout: image batches channels-last on a CPU, unchanged elsewhere."""

import torch

from fastfree.layout import cpu_layout


def test_a_cpu_batch_becomes_channels_last_with_the_same_values():
    x = torch.rand(4, 3, 8, 8)
    y = cpu_layout(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, y) and y.shape == x.shape


def test_other_shapes_are_left_alone():
    for shape in ((3, 8, 8), (2, 4, 3, 8, 8), (5, 10)):
        x = torch.rand(shape)
        assert cpu_layout(x) is x
