"""Plain torch implementations of the fused ops (the CPU path, and the semantics the kernels match).

Each returns per-row values and, when asked, the gradient "per unit of upstream gradient"
of each row's loss, so that backward is one broadcast multiply.
"""

import torch
import torch.nn.functional as F

from ._dispatch import accumulation_dtype


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(x.to(accumulation_dtype(x.dtype)), dim=-1)


def inversion_rows(
    teacher: torch.Tensor, student: torch.Tensor, labels: torch.Tensor, adversarial: bool, compute_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: CE(M, y) - eta * KL(M || F) (CE alone if not adversarial), eta, and dloss/dM."""
    classes = teacher.shape[-1]
    log_p = _log_softmax(teacher)
    log_q = _log_softmax(student)
    ce = F.nll_loss(log_p.reshape(-1, classes), labels.reshape(-1), reduction="none").reshape(labels.shape)
    eta = (teacher.argmax(-1) == student.argmax(-1)).to(log_p.dtype)
    p = log_p.exp()
    diff = log_p - log_q
    kl = (p * diff).sum(-1)
    loss = ce - eta * kl if adversarial else ce
    if not compute_grad:
        return loss, eta, log_p.new_empty(0)
    onehot = (torch.arange(classes, device=labels.device) == labels.unsqueeze(-1)).to(p.dtype)
    valid = (labels != -100).unsqueeze(-1)  # cross_entropy's default ignore_index
    grad = torch.where(valid, p - onehot, torch.zeros_like(p))
    if adversarial:
        grad = grad - eta.unsqueeze(-1) * p * (diff - kl.unsqueeze(-1))
    return loss, eta, grad


def kl_rows(teacher: torch.Tensor, student: torch.Tensor, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row KL(M || F) and dKL/dF = softmax(F) - softmax(M)."""
    log_p = _log_softmax(teacher)
    log_q = _log_softmax(student)
    p = log_p.exp()
    kl = (p * (log_p - log_q)).sum(-1)
    if not compute_grad:
        return kl, log_p.new_empty(0)
    return kl, log_q.exp() - p
