"""Fused distillation loss (Eq. 3 of FREE, BELL): KL(M || F) per row with dKL/dF, in one pass.

dKL(M || F)/dF = softmax(F) - softmax(M), per unit of upstream gradient, so backward is one
broadcast multiply. The teacher M gets no gradient. float32 accumulation; inputs only read.
"""

import torch
import triton
import triton.language as tl
from torch.library import register_autograd, register_vmap, triton_op
from torch.utils.flop_counter import register_flop_formula

from . import reference
from ._attach import with_gradient
from ._dispatch import (accumulation_dtype, blocks, launch_options, launchable, launcher, needs_gradient, num_rows,
                        plain_autograd)
from ._rows import load_rows, softmax_rows

# Per element (exp/log as 1): two log-softmaxes ~9, KL ~3; gradient q - p ~2 (q = exp/sum)
# plus the backward's scale 1.
FWD_FLOPS_PER_ELEMENT = 12
GRAD_FLOPS_PER_ELEMENT = 3



@triton.jit
def _kl_kernel(
    m_ptr, f_ptr, kl_ptr, grad_ptr, R, C,
    COMPUTE_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows, cols, row_ok, col_ok, mask, offs, m, f = load_rows(m_ptr, f_ptr, R, C, BLOCK_R, BLOCK_C)
    log_p, p = softmax_rows(m)
    log_q, q = softmax_rows(f)
    kl = tl.sum(p * tl.where(col_ok[None, :], log_p - log_q, 0.0), axis=1)
    tl.store(kl_ptr + rows, kl, mask=row_ok)
    if COMPUTE_GRAD:
        tl.store(grad_ptr + offs, q - p, mask=mask)


@triton_op("fastfree::kl_rows", mutates_args=())
def kl_rows_op(teacher: torch.Tensor, student: torch.Tensor, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(M || F) per row [...], dKL/dstudent per unit upstream gradient [..., C] or [0])."""
    if not launchable(student):
        return reference.kl_rows(teacher, student, compute_grad)
    classes = student.shape[-1]
    rows = num_rows(student.shape)
    acc = accumulation_dtype(student.dtype)
    m = teacher.reshape(rows, classes).contiguous()
    f = student.reshape(rows, classes).contiguous()
    kl = torch.empty(rows, device=student.device, dtype=acc)
    grad = torch.empty((rows, classes) if compute_grad else (0,), device=student.device, dtype=acc)
    if rows > 0:
        block_r, block_c, num_warps = blocks(rows, classes)
        grid = (triton.cdiv(rows, block_r),)
        launcher(_kl_kernel, student)[grid](
            m, f, kl, grad, rows, classes,
            COMPUTE_GRAD=compute_grad, BLOCK_R=block_r, BLOCK_C=block_c, **launch_options(num_warps),
        )
    grad = grad.reshape(student.shape) if compute_grad else grad
    return kl.reshape(student.shape[:-1]), grad


def _setup_context(ctx, inputs, output):
    teacher, student, compute_grad = inputs
    ctx.compute_grad = compute_grad
    ctx.dtype = student.dtype
    if compute_grad:
        ctx.save_for_backward(output[1])
    else:
        ctx.save_for_backward(teacher, student)


def _backward(ctx, grad_kl, grad_unit):
    if ctx.compute_grad:
        (unit,) = ctx.saved_tensors
    else:
        teacher, student = ctx.saved_tensors
        unit = kl_rows_op(teacher, student, True)[1]
    return None, (grad_kl.unsqueeze(-1) * unit).to(ctx.dtype), None


register_autograd("fastfree::kl_rows", _backward, setup_context=_setup_context)


def _vmap(info, in_dims, teacher, student, compute_grad):
    def front(x, dim):
        return x.movedim(dim, 0) if dim is not None else x.unsqueeze(0).expand(info.batch_size, *x.shape)

    out = kl_rows_op(front(teacher, in_dims[0]), front(student, in_dims[1]), compute_grad)
    return out, (0, 0 if compute_grad else None)


register_vmap("fastfree::kl_rows", _vmap)


@register_flop_formula(torch.ops.fastfree.kl_rows)
def _flops(teacher_shape, student_shape, compute_grad, *args, out_shape=None, **kwargs):
    elements = 1
    for size in student_shape:
        elements *= size
    return elements * (FWD_FLOPS_PER_ELEMENT + (GRAD_FLOPS_PER_ELEMENT if compute_grad else 0))


def kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(M) || softmax(F)) per row [...]; gradient only w.r.t. the student."""
    compute_grad = needs_gradient(student_logits)
    if compute_grad and plain_autograd(student_logits):  # eager: the op's own formula, no extra launches
        return kl_rows_op(teacher_logits.detach(), student_logits, True)[0]
    kl, unit = kl_rows_op(teacher_logits.detach(), student_logits.detach(), compute_grad)
    return with_gradient(kl, student_logits, unit) if compute_grad else kl


def distillation_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 3, as `fastfree.free.losses.distillation_loss`: mean over rows of KL(M || F)."""
    return kl_rows(teacher_logits, student_logits).mean()
