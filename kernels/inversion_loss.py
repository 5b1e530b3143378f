"""Fused inversion loss (Eq. 1 of FREE): CE(M, y) - eta * KL(M || F), with dL/dM, in one pass.

Rows of logits of any batch shape [..., C] (e.g. [T, B, C] for T teachers). One program
handles BLOCK_R whole rows (BLOCK_C >= C columns): both log-softmaxes, the cross-entropy, the
agreement eta = [argmax M == argmax F] (ties: first index, as torch.argmax), KL(M || F), the
row loss, and (when asked) the gradient of the row loss w.r.t. M per unit of upstream gradient:

    dL/dM = (softmax(M) - onehot(y)) - eta * p * (log p - log q - KL),   p = softmax(M), q = softmax(F)

so backward is one broadcast multiply. Accumulates in float32 whatever the input dtype; no host
synchronisation; the inputs are only read. The student F gets no gradient. A label outside
[0, C) other than -100 (cross_entropy's ignore_index) gives that row a NaN loss and gradient,
where the torch path raises (raising here would need a host synchronisation).
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

# Honest per-element FLOP counts (exp/log counted as 1): two log-softmaxes (max, sub, exp, sum,
# p = exp/sum) ~9, CE ~1, two argmaxes ~2, KL (sub, mul, sum) ~3; the gradient (p - onehot,
# log p - log q - KL, two muls, a sub) ~6 plus the backward's scale by the upstream gradient 1.
FWD_FLOPS_PER_ELEMENT = 15
GRAD_FLOPS_PER_ELEMENT = 7



@triton.jit
def _inversion_kernel(
    m_ptr, f_ptr, y_ptr, loss_ptr, eta_ptr, grad_ptr, R, C,
    ADVERSARIAL: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows, cols, row_ok, col_ok, mask, offs, m, f = load_rows(m_ptr, f_ptr, R, C, BLOCK_R, BLOCK_C)
    y = tl.load(y_ptr + rows, mask=row_ok, other=0)
    log_p, p = softmax_rows(m)
    log_q, _ = softmax_rows(f)

    is_y = cols[None, :] == y[:, None]
    valid = y != -100  # cross_entropy's default ignore_index
    # A label outside [0, C) (other than -100) makes the row NaN: torch raises there, and a check
    # on the host would synchronise; the row's CE would otherwise silently read 0.
    bad = valid & ((y < 0) | (y >= C))
    ce = -tl.sum(tl.where(is_y, log_p, 0.0), axis=1)
    eta = (tl.argmax(m, axis=1, tie_break_left=True) == tl.argmax(f, axis=1, tie_break_left=True)).to(tl.float32)
    diff = tl.where(col_ok[None, :], log_p - log_q, 0.0)
    kl = tl.sum(p * diff, axis=1)
    if ADVERSARIAL:
        loss = ce - eta * kl
    else:
        loss = ce
    loss = tl.where(bad, float("nan"), loss)
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    tl.store(eta_ptr + rows, eta, mask=row_ok)
    if COMPUTE_GRAD:
        grad = tl.where(valid[:, None], p - tl.where(is_y, 1.0, 0.0), 0.0)
        if ADVERSARIAL:
            grad = grad - eta[:, None] * p * (diff - kl[:, None])
        grad = tl.where(bad[:, None], float("nan"), grad)
        tl.store(grad_ptr + offs, grad, mask=mask)


@triton_op("fastfree::inversion_loss_rows", mutates_args=())
def inversion_loss_rows_op(
    teacher: torch.Tensor, student: torch.Tensor, labels: torch.Tensor, adversarial: bool, compute_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row loss [...], eta [...], dloss/dteacher per unit upstream gradient [..., C] or [0])."""
    if not launchable(teacher):
        return reference.inversion_rows(teacher, student, labels, adversarial, compute_grad)
    classes = teacher.shape[-1]
    rows = num_rows(teacher.shape)
    acc = accumulation_dtype(teacher.dtype)
    m = teacher.reshape(rows, classes).contiguous()
    f = student.reshape(rows, classes).contiguous()
    y = labels.reshape(rows).contiguous()
    loss = torch.empty(rows, device=teacher.device, dtype=acc)
    eta = torch.empty(rows, device=teacher.device, dtype=acc)
    grad = torch.empty((rows, classes) if compute_grad else (0,), device=teacher.device, dtype=acc)
    if rows > 0:
        block_r, block_c, num_warps = blocks(rows, classes)
        grid = (triton.cdiv(rows, block_r),)
        launcher(_inversion_kernel, teacher)[grid](
            m, f, y, loss, eta, grad, rows, classes,
            ADVERSARIAL=adversarial, COMPUTE_GRAD=compute_grad, BLOCK_R=block_r, BLOCK_C=block_c,
            **launch_options(num_warps),
        )
    lead = teacher.shape[:-1]
    grad = grad.reshape(teacher.shape) if compute_grad else grad
    return loss.reshape(lead), eta.reshape(lead), grad


def _setup_context(ctx, inputs, output):
    teacher, student, labels, adversarial, compute_grad = inputs
    ctx.adversarial = adversarial
    ctx.compute_grad = compute_grad
    ctx.dtype = teacher.dtype
    if compute_grad:
        ctx.save_for_backward(output[2])
    else:  # not computed in the forward (e.g. called without grad mode): recompute in backward
        ctx.save_for_backward(teacher, student, labels)


def _backward(ctx, grad_loss, grad_eta, grad_unit):
    if ctx.compute_grad:
        (unit,) = ctx.saved_tensors
    else:
        teacher, student, labels = ctx.saved_tensors
        unit = inversion_loss_rows_op(teacher, student, labels, ctx.adversarial, True)[2]
    return (grad_loss.unsqueeze(-1) * unit).to(ctx.dtype), None, None, None, None


register_autograd("fastfree::inversion_loss_rows", _backward, setup_context=_setup_context)


def _vmap(info, in_dims, teacher, student, labels, adversarial, compute_grad):
    """Fold the vmapped dimension into the rows: move it to the front (expand unbatched inputs)."""

    def front(x, dim):
        return x.movedim(dim, 0) if dim is not None else x.unsqueeze(0).expand(info.batch_size, *x.shape)

    t_dim, s_dim, y_dim = in_dims[:3]
    out = inversion_loss_rows_op(
        front(teacher, t_dim), front(student, s_dim), front(labels, y_dim), adversarial, compute_grad
    )
    return out, (0, 0, 0 if compute_grad else None)


register_vmap("fastfree::inversion_loss_rows", _vmap)


@register_flop_formula(torch.ops.fastfree.inversion_loss_rows)
def _flops(teacher_shape, student_shape, labels_shape, adversarial, compute_grad, *args, out_shape=None, **kwargs):
    elements = 1
    for size in teacher_shape:
        elements *= size
    return elements * (FWD_FLOPS_PER_ELEMENT + (GRAD_FLOPS_PER_ELEMENT if compute_grad else 0))


def inversion_loss_rows(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, adversarial: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row Eq. 1 loss [...] (float32, float64 for float64 logits) and eta [...] (no gradient)."""
    compute_grad = needs_gradient(teacher_logits)
    if compute_grad and plain_autograd(teacher_logits):  # eager: the op's own formula, no extra launches
        loss, eta, _ = inversion_loss_rows_op(teacher_logits, student_logits.detach(), labels, adversarial, True)
        return loss, eta.detach()
    loss, eta, unit = inversion_loss_rows_op(teacher_logits.detach(), student_logits.detach(), labels, adversarial,
                                             compute_grad)
    return (with_gradient(loss, teacher_logits, unit) if compute_grad else loss), eta


def inversion_loss(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, adversarial: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1, as `fastfree.free.losses.inversion_loss`: (mean row loss, eta [...] as float)."""
    loss, eta = inversion_loss_rows(teacher_logits, student_logits, labels, adversarial)
    return loss.mean(), eta
