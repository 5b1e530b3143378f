"""When the fused ops launch their kernels through wrap_triton (traced) or directly (eager)."""

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from fastfree.kernels._dispatch import traced


class _Passthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_an_eager_call_is_not_traced():
    assert not traced(torch.zeros(2, 3))


def test_fake_tensors_and_dispatch_modes_are_traced():
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.zeros(2, 3))
    assert traced(fake)
    with _Passthrough():
        assert traced(torch.zeros(2, 3))


def test_a_call_inside_torch_compile_is_traced():
    seen = []

    def f(x):
        seen.append(traced(x))
        return x + 1

    torch.compile(f, backend="aot_eager", fullgraph=True)(torch.zeros(2, 3))
    assert seen and all(seen)
