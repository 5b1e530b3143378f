"""Teachers paused at an epoch's end: everything their next epoch starts from.

Why: a first Ctrl-C or SIGTERM used to let the teachers under way finish. The batched engine
(the default on a GPU) trains a whole group (up to `group_size`, 100: the paper's pool) in one
vmapped run, so that meant waiting for the pool; on a CPU one CIFAR-FS teacher of 60 epochs
takes minutes, more than a batch scheduler's grace period. Now the teachers under way stop at
the end of their epoch and this state is saved beside the finished teachers
(`PretrainProgress.save_paused`); `--resume` continues them from the next epoch. Nothing else
carries over an epoch boundary: each epoch's data order comes from the teacher's seed and the
epoch (`epoch_order`), the learning rate from the epoch, and Conv4 and the ResNets draw no
random numbers while training, so the continued teachers equal uninterrupted ones bit for bit.

A state is a flat name -> tensor mapping (safetensors' shape). A batched group's (`pack`,
`unpack`): the stacked parameters and buffers, the optimiser's state, the best epoch's
parameters and buffers and each teacher's best held-out accuracy and epoch. The reference
trainer's one teacher (`pack_teacher`, `continue_teacher`): its module's state, torch.optim's
per-parameter state and learning rate, and its best epoch's state, accuracy and epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from fastfree.errors import FastFreeError
from fastfree.optim import Tensors

PARTS = ("params", "buffers", "best_params", "best_buffers")


@dataclass(frozen=True)
class GroupState:
    indices: tuple[int, ...]  # the group's teachers, in the order of their stacked rows (one: a reference teacher)
    epochs_done: int  # the next epoch to train (0-based) is this one
    tensors: dict[str, torch.Tensor]


class GroupPaused(Exception):
    """Raised by a batched group, or a reference teacher, asked to stop with epochs left: carries its state."""

    def __init__(self, state: GroupState):
        super().__init__(f"{len(state.indices)} teacher(s) paused after epoch {state.epochs_done}")
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
    return GroupState(tuple(indices), epochs_done, _copies(_flat(parts, opt_state, best_acc, best_epoch)))


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


def _copies(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # on the CPU (safetensors writes from there); copies: no two names share memory (safetensors refuses
    # that), and later steps cannot change them
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in flat.items()}


def pack_teacher(index: int, epochs_done: int, model: nn.Module, opt: torch.optim.Optimizer,
                 best: tuple[float, dict[str, torch.Tensor], int]) -> GroupState:
    """The reference trainer's teacher after `epochs_done` epochs; `best` is its (accuracy, state, epoch)."""
    flat = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, per_param in opt.state_dict()["state"].items():  # Adam: step, exp_avg, exp_avg_sq; SGD: momentum_buffer
        flat.update({f"opt.{i}.{name}": v for name, v in per_param.items() if isinstance(v, torch.Tensor)})
    flat["lr"] = torch.tensor(opt.param_groups[0]["lr"], dtype=torch.float64)  # as the schedule has made it
    acc, state, epoch = best
    flat.update({f"best.{k}": v for k, v in state.items()})
    flat.update({"best_acc": torch.tensor(acc, dtype=torch.float64), "best_epoch": torch.tensor(epoch)})
    return GroupState((index,), epochs_done, _copies(flat))


def continue_teacher(state: GroupState, model: nn.Module, opt: torch.optim.Optimizer,
                     schedule: torch.optim.lr_scheduler.LRScheduler) -> tuple[float, dict[str, torch.Tensor], int]:
    """Load `state` into a fresh teacher, its optimiser and its schedule (as built before the first
    epoch); returns its best (accuracy, state, epoch) so far. A state of another shape is refused."""
    t = state.tensors
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in t.items() if k.startswith("model.")})
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in t.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                per_param.setdefault(int(i), {})[name] = v.clone()  # the optimiser updates its state in place
        for group in opt.param_groups:
            group["lr"] = float(t["lr"])
        opt.load_state_dict({"state": per_param, "param_groups": opt.state_dict()["param_groups"]})
        device = next(model.parameters()).device
        best_state = {k.removeprefix("best."): v.to(device, copy=True) for k, v in t.items() if k.startswith("best.")}
        if best_state.keys() != model.state_dict().keys():
            raise KeyError("best." + next(iter(best_state.keys() ^ model.state_dict().keys()), ""))
        best = (float(t["best_acc"]), best_state, int(t["best_epoch"]))
    except (RuntimeError, KeyError, ValueError) as e:
        raise FastFreeError(f"the saved state of teacher {state.indices[0]} does not fit it ({e}): it was written "
                            "by another version or for another architecture") from e
    schedule.last_epoch = state.epochs_done  # as stepped once after each epoch done (the rate is set above)
    return best


def epochs_text(epochs: list[int]) -> str:
    """'epoch 3', 'epochs 3 and 4', 'epochs 3, 4 and 6' (distinct, sorted): for messages."""
    e = [str(x) for x in sorted(set(epochs))]
    return f"epoch {e[0]}" if len(e) == 1 else f"epochs {', '.join(e[:-1])} and {e[-1]}"


def under_way(states: list[GroupState], epochs: int) -> str:
    """What a stop kept of the teachers under way, e.g. 'the 2 under way saved after epochs 3 and 4 of 60'."""
    n = sum(len(s.indices) for s in states)
    return f"the {n} under way saved after {epochs_text([s.epochs_done for s in states])} of {epochs}"


def continuing(states: list[GroupState], epochs: int) -> str:
    """What a resumed run continues, e.g. '2 more from epochs 4 and 5 of 60' (1-based, as the messages count)."""
    n = sum(len(s.indices) for s in states)
    return f"{n} more from {epochs_text([s.epochs_done + 1 for s in states])} of {epochs}"


__all__ = ["GroupPaused", "GroupState", "continue_teacher", "continuing", "epochs_text", "pack", "pack_teacher",
           "under_way", "unpack"]
