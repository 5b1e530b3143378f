"""Fused Triton kernels (installed as `fastfree.kernels`).

- `inversion_loss(teacher_logits, student_logits, labels, adversarial=True) -> (loss, eta)`:
  Eq. 1, as `fastfree.free.losses.inversion_loss`; `inversion_loss_rows` gives per-row losses.
- `distillation_loss(teacher_logits, student_logits) -> loss`: Eq. 3, as
  `fastfree.free.losses.distillation_loss`; `kl_rows` gives per-row KL.

Both are `torch.library.triton_op`s (`torch.ops.fastfree.inversion_loss_rows`,
`torch.ops.fastfree.kl_rows`) with an autograd formula, a vmap rule (batch dims folded into
rows) and a FLOP formula. They run the Triton kernels on CUDA tensors (or on CPU under
TRITON_INTERPRET=1, read when this package is imported) and a plain torch implementation
(`fastfree.kernels.reference`) elsewhere, and for float64.
"""

from ._dispatch import use_triton
from .distillation_loss import distillation_loss, kl_rows
from .inversion_loss import inversion_loss, inversion_loss_rows

__all__ = ["distillation_loss", "inversion_loss", "inversion_loss_rows", "kl_rows", "use_triton"]
