"""The losses of FREE, written as the equations read (the reference for the Triton kernels).

Eq. 1 (inversion):  L_G = CE(M(x), y) - eta * KL(M(x) || F(x)),
                    eta = 1[argmax M(x) == argmax F(x)], per sample, averaged over the batch.
Eq. 3 (distillation): L_KD = KL(M(x) || F(x)), averaged over the batch.

M is the teacher (pre-trained model), F the meta-learner. KL(P || Q) = sum_c P_c (log P_c -
log Q_c) with true log-probabilities on both sides (the published code passes
probabilities where F.kl_div expects log-probabilities; that is not a KL and is not copied).
Losses are computed in at least float32 whatever the logits' dtype (float64 stays float64,
for the equivalence tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _accumulation(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits -> float32; float32 and float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def kl_per_sample(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) for each row, [..., C] -> [...]."""
    log_p = F.log_softmax(_accumulation(p_logits), dim=-1)
    log_q = F.log_softmax(_accumulation(q_logits), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def inversion_loss(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, adversarial: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1. Returns (loss, eta [rows] as float). The student (meta-learner) gets no gradient.

    With adversarial=False (the warm-up iterations) the loss is the CE term alone.
    """
    student_logits = student_logits.detach()
    classes = teacher_logits.shape[-1]  # rows of any batch shape [..., C] (e.g. [T, B, C])
    teacher_logits, student_logits = teacher_logits.reshape(-1, classes), student_logits.reshape(-1, classes)
    ce = F.cross_entropy(_accumulation(teacher_logits), labels.reshape(-1), reduction="none")
    eta = (teacher_logits.argmax(-1) == student_logits.argmax(-1)).to(ce.dtype)
    if not adversarial:
        return ce.mean(), eta
    return (ce - eta * kl_per_sample(teacher_logits, student_logits)).mean(), eta


def distillation_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 3's L_KD = mean over samples of KL(M || F); gradient only w.r.t. the student."""
    return kl_per_sample(teacher_logits.detach(), student_logits).mean()
