"""A batched group of teachers paused at an epoch's end: everything its next epoch starts from.

Why: the batched engine (the default on a GPU) trains a whole group (up to `group_size`, 100: the
paper's pool) in one vmapped run, so "finish the teachers under way" would make a Ctrl-C or
SIGTERM wait for the whole pool. Instead the group stops at the end of the epoch under way and
this state is saved beside the finished teachers (`PretrainProgress.save_group`); `--resume`
continues it from the next epoch. Nothing else carries over an epoch boundary: each epoch's
data order comes from the teacher's seed and the epoch (`epoch_order`), the learning rate from
the epoch (`OptimizerSpec.lr_at`), and Conv4 and the ResNets draw no random numbers while
training, so the continued group equals an uninterrupted one bit for bit.

The state is a flat name -> tensor mapping (safetensors' shape): the stacked parameters and
buffers, the optimiser's state, the best epoch's parameters and buffers and each teacher's best
held-out accuracy and epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from fastfree.errors import FastFreeError
from fastfree.optim import Tensors

PARTS = ("params", "buffers", "best_params", "best_buffers")


@dataclass(frozen=True)
class GroupState:
    indices: tuple[int, ...]  # the group's teachers, in the order of their stacked rows
    epochs_done: int  # the next epoch to train (0-based) is this one
    tensors: dict[str, torch.Tensor]


class GroupPaused(Exception):
    """Raised by a batched group asked to stop with epochs left: carries its state."""

    def __init__(self, state: GroupState):
        super().__init__(f"group of {len(state.indices)} teachers paused after epoch {state.epochs_done}")
        self.state = state


def _flat(parts: dict[str, Tensors], opt_state, best_acc: torch.Tensor,
          best_epoch: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = {f"{part}.{k}": v for part in PARTS for k, v in parts[part].items()}
    for f in fields(opt_state):  # AdamState (exp_avg, exp_avg_sq, step) or SgdState (momentum_buffer)
        value = getattr(opt_state, f.name)
        if isinstance(value, dict):
            flat.update({f"opt.{f.name}.{k}": v for k, v in value.items()})
        else:
            flat[f"opt.{f.name}"] = value
    flat.update({"best_acc": best_acc, "best_epoch": best_epoch})
    return flat


def pack(indices: tuple[int, ...], epochs_done: int, parts: dict[str, Tensors], opt_state,
         best_acc: torch.Tensor, best_epoch: torch.Tensor) -> GroupState:
    """The state as one flat mapping, copied to the CPU (safetensors writes from there)."""
    flat = _flat(parts, opt_state, best_acc, best_epoch)
    # clone: no two names share memory (safetensors refuses that), and later steps cannot change the copy
    return GroupState(tuple(indices), epochs_done, {k: v.detach().to("cpu", copy=True).contiguous()
                                                     for k, v in flat.items()})


def unpack(state: GroupState, parts: dict[str, Tensors], opt_state, best_acc: torch.Tensor,
           best_epoch: torch.Tensor) -> tuple[dict[str, Tensors], object, torch.Tensor, torch.Tensor]:
    """`parts`, `opt_state`, `best_acc` and `best_epoch` of a fresh group (names, shapes, dtypes and
    device to fill) with the saved values. A state of another group's shape is refused, naming it."""
    like = _flat(parts, opt_state, best_acc, best_epoch)
    got = state.tensors
    wrong = sorted(set(like) ^ set(got)) + sorted(k for k in set(like) & set(got)
                                                  if (like[k].shape, like[k].dtype) != (got[k].shape, got[k].dtype))
    if wrong:
        raise FastFreeError(f"the saved state of the group under way does not fit its teachers (e.g. {wrong[0]}): "
                            "it was written by another version or for another architecture")
    device = best_acc.device

    def value(name: str) -> torch.Tensor:  # a copy: training updates BatchNorm's running statistics in place
        return got[name].to(device, copy=True)

    new_parts = {part: {k: value(f"{part}.{k}") for k in parts[part]} for part in PARTS}
    opt_fields = {}
    for f in fields(opt_state):
        current = getattr(opt_state, f.name)
        opt_fields[f.name] = ({k: value(f"opt.{f.name}.{k}") for k in current} if isinstance(current, dict)
                              else value(f"opt.{f.name}"))
    return new_parts, type(opt_state)(**opt_fields), value("best_acc"), value("best_epoch")


__all__ = ["GroupPaused", "GroupState", "pack", "unpack"]
