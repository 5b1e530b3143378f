"""The BELL step-size report: the paper's interpolation is bounded by eps * b * alpha; a fresh Adam's
first step is about lr per weight; with a bank it also measures one replay meta-batch."""

import torch

from fastfree.free.memory import MemoryBank
from fastfree.metatest.adapt import functional_template
from fastfree.models.conv4 import Conv4
from fastfree.profiling.bell_step_size import step_sizes


def test_interpolation_is_bounded_and_adams_first_step_is_its_learning_rate():
    torch.manual_seed(0)
    learner = functional_template(Conv4(5, 32, 32))
    bank = MemoryBank(40, (3, 32, 32))
    bank.add(torch.rand(100, 3, 32, 32), torch.arange(5).repeat_interleave(20) + 10)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    sizes = step_sizes(learner, None, bank, b=4)
    assert 0 < sizes["bell_interpolate"]["max"] <= 1e-3 * 4 * 1e-3 * 1.01  # eps * b * alpha
    assert abs(sizes["bell_adam"]["max"] - 1e-3) < 1e-5  # a fresh Adam: a sign step of size lr
    assert 0 < sizes["replay_one_meta_batch"]["max"] <= 1.01e-3
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())  # measured on copies
