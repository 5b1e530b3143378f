"""A mixed pool's teachers for the fast engine: one StackedTeachers per architecture.

vmap maps one function over stacked tensors, so it needs teachers of one architecture. A
multi-architecture pool (the paper's Table 4) is therefore split into groups by architecture
signature (and a multi-domain pool by domain image size as well: each group then resizes
once); global teacher id i lives at `where[i] = (group, index in the group's stack)`.
An iteration's sampled ids split into one `GroupPart` per group present (the ids' positions
in the sampled order and their indices in the group), each part runs vmapped on its group,
and `merge` puts the parts' outputs back in the sampled order, so the memory bank, BELL and
the alignment diagnostic see the tasks in the order the reference engine makes them.
A single-architecture pool is one group whose one part is the whole batch: nothing is
reordered or copied then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fastfree.engine.teachers import StackedTeachers
from fastfree.errors import FastFreeError


@dataclass(frozen=True)
class GroupPart:
    """The sampled teachers of one group: where they stand in the sampled order, and in the group."""

    group: int
    positions: tuple[int, ...]
    local: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.positions)


def signature(model: nn.Module) -> tuple:
    """What decides whether two teachers stack: class, every tensor's name, shape and dtype, and what
    a wrapper decides outside its tensors (a multi-domain TeacherAdapter's resize: fastfree.free.domains),
    so teachers are grouped by (architecture, domain size)."""
    return (type(model).__qualname__,
            tuple((k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()),
            getattr(model, "signature_extra", ()))


def whole(parts: list[GroupPart]) -> bool:
    """One part covering the batch in its own order (a single-architecture pool)."""
    return len(parts) == 1 and parts[0].positions == tuple(range(len(parts[0])))


def take(x: torch.Tensor, parts: list[GroupPart], part: GroupPart) -> torch.Tensor:
    """The rows of x [b, ...] that belong to `part`, in the part's order."""
    if whole(parts):
        return x
    return x.index_select(0, torch.tensor(part.positions, device=x.device))


def merge(parts: list[GroupPart], values: list[torch.Tensor]) -> torch.Tensor:
    """Per-part outputs [len(part), ...] back into one tensor [b, ...] in the sampled order."""
    if whole(parts):
        return values[0]
    order = [p for part in parts for p in part.positions]
    inverse = sorted(range(len(order)), key=order.__getitem__)
    stacked = torch.cat(values)
    return stacked.index_select(0, torch.tensor(inverse, device=stacked.device))


@dataclass
class GroupedBatch:
    """What TeacherGroups.gather returns: each part with its teachers' stacked tensors."""

    parts: list[GroupPart]
    tensors: list[dict[str, torch.Tensor]]


class TeacherGroups:
    def __init__(self, teachers: list[nn.Module]):
        if not teachers:
            raise FastFreeError("the fast engine needs at least one teacher")
        members: dict[tuple, list[int]] = {}  # signature -> global ids, groups in order of first appearance
        for i, t in enumerate(teachers):
            members.setdefault(signature(t), []).append(i)
        self.members = list(members.values())
        self.groups = [StackedTeachers([teachers[i] for i in ids]) for ids in self.members]
        self.where: list[tuple[int, int]] = [(-1, -1)] * len(teachers)
        for g, ids in enumerate(self.members):
            for local, i in enumerate(ids):
                self.where[i] = (g, local)
        ways = {s.ways for s in self.groups}
        if len(ways) != 1:
            raise FastFreeError(f"the pool's teachers solve tasks with different numbers of classes ({sorted(ways)}); "
                                "FREE needs one")
        self.ways = ways.pop()

    def __len__(self) -> int:
        return len(self.where)

    def split(self, ids: list[int]) -> list[GroupPart]:
        """One part per group present in `ids` (host ints: no device read), groups in pool order."""
        by_group: dict[int, tuple[list[int], list[int]]] = {}
        for position, i in enumerate(ids):
            g, local = self.where[i]
            by_group.setdefault(g, ([], []))
            by_group[g][0].append(position)
            by_group[g][1].append(local)
        return [GroupPart(g, tuple(pos), tuple(loc)) for g, (pos, loc) in sorted(by_group.items())]

    def local_ids(self, part: GroupPart) -> torch.Tensor:
        """The part's indices into its group's stack, on the stack's device."""
        device = next(iter(self.groups[part.group].tensors.values())).device
        return torch.tensor(part.local, device=device)

    def gather(self, ids: list[int]) -> GroupedBatch:
        parts = self.split(ids)
        return GroupedBatch(parts, [self.groups[p.group].gather(self.local_ids(p)) for p in parts])

    def logits(self, batch: GroupedBatch, x: torch.Tensor) -> torch.Tensor:
        """Teacher j's logits on x[j] for every sampled j: [b, n, ways], one vmapped forward per group."""
        return merge(batch.parts, [self.groups[p.group].logits(t, take(x, batch.parts, p))
                                   for p, t in zip(batch.parts, batch.tensors)])

    def bound(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Teacher i as a callable x -> logits (its folded, stacked weights)."""
        g, local = self.where[i]
        stack = self.groups[g]
        tensors = {k: v[local] for k, v in stack.tensors.items()}
        return lambda x: stack.forward(tensors, x)
