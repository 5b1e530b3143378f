"""Fused Triton kernels (installed as `fastfree.kernels`).

Planned here: the fused KL/CE inversion loss and the distillation loss (see the open issue
on Triton kernels). Nothing in the engine imports this package yet.
"""
