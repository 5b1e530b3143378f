"""A pool's teachers, BatchNorm folded and parameters stacked, for one vmapped forward.

Frozen eval-mode teachers of one architecture become one template (a folded copy of the
first) plus a dict of stacked tensors [P, ...]. A batch of sampled teachers is an index into
the stack, so all b teachers of an iteration run as one vmapped forward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from fastfree.engine.fold import fold_batchnorm
from fastfree.errors import FastFreeError


class StackedTeachers:
    def __init__(self, teachers: list[nn.Module]):
        if not teachers:
            raise FastFreeError("the fast engine needs at least one teacher")
        folded = [fold_batchnorm(t.eval()) for t in teachers]
        first = dict(folded[0].named_parameters()) | dict(folded[0].named_buffers())
        for i, f in enumerate(folded[1:], 1):
            other = dict(f.named_parameters()) | dict(f.named_buffers())
            if other.keys() != first.keys() or any(other[k].shape != first[k].shape for k in first):
                raise FastFreeError(
                    f"teacher {i} has another architecture than teacher 0: a stack holds one architecture; "
                    "group a mixed pool with TeacherGroups")
        self.template = folded[0].requires_grad_(False)
        self.tensors = {k: torch.stack([dict(f.named_parameters()).get(k, dict(f.named_buffers()).get(k)).detach()
                                        for f in folded]) for k in first}
        last = [m for m in teachers[0].modules() if isinstance(m, nn.Linear)][-1]
        self.ways = last.out_features

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def gather(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stacked tensors of the teachers `ids` (a LongTensor on the device), [b, ...]."""
        return {k: v.index_select(0, ids) for k, v in self.tensors.items()}

    def forward(self, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """One teacher's logits (unstacked tensors; vmap this over the stack)."""
        return functional_call(self.template, tensors, (x,))

    def logits(self, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Teacher j's logits on x[j] for the gathered teachers: [b, n, ways] in one vmapped forward."""
        return vmap(self.forward)(tensors, x)
