"""Triton building blocks both loss kernels share: a block of whole rows, its log-softmax."""

import triton
import triton.language as tl


@triton.jit
def load_rows(m_ptr, f_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's BLOCK_R rows of both logit tensors, as float32 [BLOCK_R, BLOCK_C].

    Loads with 0 (representable in every dtype), then pads columns past C with a finite
    "minus infinity": no inf - inf, so no NumPy warnings under the interpreter.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < R
    col_ok = cols < C
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    m = tl.where(col_ok[None, :], tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32), -1.0e30)
    f = tl.where(col_ok[None, :], tl.load(f_ptr + offs, mask=mask, other=0.0).to(tl.float32), -1.0e30)
    return rows, cols, row_ok, col_ok, mask, offs, m, f


@triton.jit
def softmax_rows(x):
    """(log_softmax(x), softmax(x)) along axis 1, in float32."""
    shifted = x - tl.max(x, axis=1)[:, None]
    e = tl.exp(shifted)
    s = tl.sum(e, axis=1)
    return shifted - tl.log(s)[:, None], e / s[:, None]
