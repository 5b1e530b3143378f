"""When the Triton kernels run, and how they are blocked.

`INTERPRET` is read once, when this package is imported: `triton.jit` decides at decoration
time whether a kernel is compiled or interpreted, so a later change of the environment
variable could not take effect anyway.
"""

import math
import os

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Widest row (classes) a single-block kernel handles; wider rows take the torch path.
MAX_BLOCK_C = 8192


def triton_runs_on(device: torch.device) -> bool:
    """True where the Triton kernels can run: a CUDA device, or any under TRITON_INTERPRET=1."""
    return device.type == "cuda" or INTERPRET


def use_triton(tensor: torch.Tensor) -> bool:
    """True where the Triton kernels can run on `tensor` (triton_runs_on its device)."""
    return triton_runs_on(tensor.device)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def launchable(tensor: torch.Tensor) -> bool:
    """Whether this call takes the Triton path (else the plain torch implementation).

    float64 stays on the torch path (the kernels accumulate in float32). Under the interpreter
    a kernel needs real CPU data, so traced calls (fake/functional tensors, an active dispatch
    mode, e.g. inside torch.compile) take the torch path there; on CUDA they go through
    `wrap_triton` and torch.compile sees the kernel.
    """
    if not use_triton(tensor) or tensor.dtype == torch.float64:
        return False
    if next_power_of_2(tensor.shape[-1]) > MAX_BLOCK_C:
        return False
    return not (INTERPRET and traced(tensor))


def traced(tensor: torch.Tensor) -> bool:
    """Whether this call is being traced (torch.compile, make_fx, a fake or proxy mode) rather than run."""
    from torch._subclasses.fake_tensor import is_fake

    return (torch.compiler.is_compiling() or type(tensor) is not torch.Tensor or is_fake(tensor)
            or _get_current_dispatch_mode() is not None)


def plain_autograd(tensor: torch.Tensor) -> bool:
    """Whether this call runs under plain eager autograd: not traced, and no torch.func transform
    (grad, vmap) active. Then the op's registered autograd formula applies (backward: one multiply),
    which needs no extra ops; elsewhere the public functions attach the gradient with plain ops
    (kernels/_attach.py), which a custom op's autograd does not compose with."""
    return not traced(tensor) and torch._C._functorch.peek_interpreter_stack() is None


def needs_gradient(tensor: torch.Tensor) -> bool:
    """Whether a loss of `tensor` must carry a gradient: grad mode on and `tensor` tracks one. Inside a
    torch.func transform (vmap) a tensor reports requires_grad False even where the tensor it wraps
    tracks a gradient (grad of vmap, or vmap followed by backward), so there the gradient is always
    computed and attached (with no gradient wanted it is a zero term; the cost is one multiply)."""
    return torch.is_grad_enabled() and (
        tensor.requires_grad or torch._C._functorch.peek_interpreter_stack() is not None)


def launcher(kernel, tensor: torch.Tensor):
    """How to launch `kernel` on `tensor`: through `wrap_triton` when traced, so that torch.compile and
    make_fx see the kernel; the plain Triton launch when run eagerly, because wrap_triton's eager
    path adds host overhead to every launch (measured elsewhere at ~70 us per call:
    Dao-AILab/flash-attention#2818); on an H100 the kernels lost to torch when called eagerly
    (bench_kernels, before this change; not yet re-measured with it).
    Under the interpreter, always the plain launch (wrap_triton rejects interpreted kernels on some
    torch versions; traced calls take the torch path there, see `launchable`)."""
    if INTERPRET or not traced(tensor):
        return kernel
    from torch.library import wrap_triton

    return wrap_triton(kernel)


def launch_options(num_warps: int) -> dict:
    """Launch keyword arguments: num_warps on a GPU (the interpreter takes none)."""
    return {} if INTERPRET else {"num_warps": num_warps}


def blocks(rows: int, cols: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps): whole rows per program, few programs under the interpreter."""
    block_c = next_power_of_2(cols)
    target = 16384 if INTERPRET else 2048  # elements per program
    block_r = max(1, min(target // block_c, next_power_of_2(rows)))
    num_warps = 4 if block_r * block_c <= 4096 else 8
    return block_r, block_c, num_warps


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (torch path); everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def num_rows(shape) -> int:
    return math.prod(shape[:-1])
