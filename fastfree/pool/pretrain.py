"""Teacher-pool pretraining: many same-architecture teachers trained in one vmapped step.

Protocol (official implementation): Adam lr 0.01, batch 128, 60 epochs, gradient-norm clip
50 per model, no augmentation, keep each teacher's best held-out epoch. In a
multi-architecture pool (Table 4) the ResNets train with SGD(lr 0.01, momentum 0.9, weight
decay 5e-4) instead of Adam; everything else (batch, epochs, clip, best epoch) is the Conv4
protocol. The authors' code (tools.pretrain) also steps a MultiStepLR after every epoch: x0.2
at epoch 70 for Conv4 (beyond 60 epochs: only CUB's 100 reach it) and at 30, 50 and 80 for the
ResNets; fastfree does the same (PretrainConfig's milestones).

`train_teachers_batched` stacks the teachers' parameters and buffers (one architecture),
takes one vmap(grad) step for all of them with a functional optimiser, and tracks each
teacher's best epoch with masked copies; asked to stop, it pauses at an epoch's end with its
state (fastfree/pool/group_state.py), from which it continues. `train_teacher_reference` is the plain one-model
loop the batched path is tested against (equal in float64); `train_teachers_side_by_side` runs
it for several teachers at once in threads (a CPU's engine). `pretrain_pool` trains a mixed
pool group by group: one batched run per architecture (and training-set size).
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Collection
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from fastfree.data.split import ImageSplit, Normalization
from fastfree.device import resolve_pool_engine
from fastfree.errors import FastFreeError
from fastfree.graceful_stop import StoppedBySignal, StopRequest
from fastfree.layout import cpu_layout
from fastfree.models import ARCHITECTURES, build_model
from fastfree.optim import clip_grad_norm_stacked
from fastfree.pool.group_state import (PARTS, GroupPaused, GroupState, continue_teacher, pack, pack_teacher,
                                       under_way, unpack)
from fastfree.pool.optimizers import OPTIMIZERS, OptimizerSpec
from fastfree.pool.teachers import TeacherSpec, epoch_order, teacher_data
from fastfree.threads import bound_to_this_thread, one_intra_op_thread


@dataclass(frozen=True)
class PretrainConfig:
    teachers: int = 100
    ways: int = 5
    # each teacher's architecture, drawn uniformly from these (one entry: a single-architecture pool)
    archs: tuple[str, ...] = ("conv4",)
    width: int | None = None  # None: each architecture's default (Conv4: 32, ResNets: 64)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.01  # every teacher's: the authors use 0.01 with Adam (Conv4) and with SGD (ResNets)
    resnet_optimizer: str = "sgd"  # ResNets: sgd (the authors' Table 4 pool) | adam (as Conv4)
    momentum: float = 0.9  # SGD's
    weight_decay: float = 5e-4  # SGD's
    clip_norm: float = 50.0
    # the authors' MultiStepLR (x lr_gamma at each milestone epoch): Conv4 at 70 (so never within
    # 60 epochs; CUB's 100 reach it), ResNets at 30, 50 and 80
    conv4_milestones: tuple[int, ...] = (70,)
    resnet_milestones: tuple[int, ...] = (30, 50, 80)
    lr_gamma: float = 0.2
    heldout_fraction: float = 0.2
    seed: int = 42
    group_size: int = 100  # teachers trained together in one vmapped step (memory bound)
    eval_batch: int = 256  # held-out images per teacher per forward

    def __post_init__(self) -> None:
        object.__setattr__(self, "archs", tuple(self.archs))  # a list from the command line or JSON
        for name in ("conv4_milestones", "resnet_milestones"):  # sorted: the order never matters to MultiStepLR
            object.__setattr__(self, name, tuple(sorted(getattr(self, name))))
        problems = []
        unknown = [a for a in self.archs if a not in ARCHITECTURES]
        if not self.archs or unknown or len(set(self.archs)) != len(self.archs):
            problems.append(f"archs={self.archs} (need distinct names among {', '.join(ARCHITECTURES)})")
        if self.resnet_optimizer not in OPTIMIZERS:
            problems.append(f"resnet_optimizer={self.resnet_optimizer!r} (use {' or '.join(OPTIMIZERS)})")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            problems.append(f"momentum={self.momentum} and weight_decay={self.weight_decay} (need 0 <= m < 1, wd >= 0)")
        if self.teachers < 1:
            problems.append(f"teachers={self.teachers} (need >= 1)")
        if self.ways < 2:
            problems.append(f"ways={self.ways} (need >= 2)")
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} (need >= 1)")
        if self.seed < 0:  # numpy seeds the teachers' class draws from it
            problems.append(f"seed={self.seed} (need >= 0)")
        if self.batch_size < 1 or self.group_size < 1 or self.eval_batch < 1:
            problems.append("batch_size, group_size and eval_batch must be >= 1")
        if not (0 < self.lr < math.inf and 0 < self.clip_norm < math.inf):
            problems.append(f"lr={self.lr} and clip_norm={self.clip_norm} must be finite and > 0")
        if any(m < 1 for m in (*self.conv4_milestones, *self.resnet_milestones)) or not 0 < self.lr_gamma <= 1:
            problems.append(f"milestones {self.conv4_milestones} / {self.resnet_milestones} and lr_gamma="
                            f"{self.lr_gamma} (need epochs >= 1 and 0 < gamma <= 1)")
        if not 0 < self.heldout_fraction < 1:
            problems.append(f"heldout_fraction={self.heldout_fraction} (need 0 < f < 1)")
        if problems:
            raise FastFreeError("invalid pretraining config: " + "; ".join(problems))

    def milestones_for(self, arch: str) -> tuple[int, ...]:
        """The milestones that take effect for `arch`: those within the epochs."""
        ms = self.resnet_milestones if arch.startswith("resnet") else self.conv4_milestones
        return tuple(m for m in ms if m < self.epochs)

    def to_dict(self) -> dict:
        """What the teachers' training depends on (recorded in manifests, compared on --resume). Only the
        milestones that take effect are recorded (within the epochs, of architectures in the pool), so
        configs that train alike compare equal: a 60-epoch Conv4 pool from before the schedule existed
        is such a pool."""
        d = asdict(self)
        d["conv4_milestones"] = list(self.milestones_for("conv4")) if "conv4" in self.archs else []
        d["resnet_milestones"] = list(self.milestones_for("resnet")) \
            if any(a.startswith("resnet") for a in self.archs) else []
        if not d["conv4_milestones"] and not d["resnet_milestones"]:
            d["lr_gamma"] = None  # no milestone takes effect: the factor never acts
        return d

    def optimizer_for(self, arch: str) -> OptimizerSpec:
        """Conv4: Adam(lr); ResNets: SGD(lr, momentum, weight decay), or Adam(lr) with resnet_optimizer='adam'."""
        milestones = self.milestones_for(arch)
        if arch.startswith("resnet") and self.resnet_optimizer == "sgd":
            return OptimizerSpec("sgd", self.lr, self.momentum, self.weight_decay, milestones, self.lr_gamma)
        return OptimizerSpec("adam", self.lr, milestones=milestones, gamma=self.lr_gamma)


@dataclass
class TrainedTeacher:
    spec: TeacherSpec
    state_dict: dict[str, torch.Tensor]
    heldout_accuracy: float  # best held-out accuracy, in [0, 1]
    best_epoch: int


# torch's default generator is process-wide: teachers initialised in threads at once would draw
# from each other's seeds (seen: side-by-side teachers differing from one-by-one ones)
_INIT_LOCK = threading.Lock()


def init_teacher(spec: TeacherSpec, cfg: PretrainConfig, image_size: int) -> nn.Module:
    """A freshly initialised teacher; its weights depend only on its own seed."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_model(spec.arch, num_classes=cfg.ways, width=cfg.width, image_size=image_size)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


# --------------------------------------------------------------------------- reference
def train_teacher_reference(
    split: ImageSplit, normalization: Normalization, spec: TeacherSpec, cfg: PretrainConfig,
    dtype: torch.dtype = torch.float32, max_steps: int | None = None,
    progress: Callable[[int], None] | None = None, stop: StopRequest | None = None,
    resume_from: GroupState | None = None,
) -> TrainedTeacher:
    """One teacher, plain PyTorch: nn.Module, torch.optim (Adam or SGD), clip_grad_norm_.

    Once `stop` is requested it stops at the end of the epoch under way and raises GroupPaused with its
    state (unless that was the last epoch); `resume_from` (such a state) continues it from the next
    epoch, equal to an uninterrupted run bit for bit (fastfree/pool/group_state.py)."""
    device = split.device
    data = teacher_data(split, spec, cfg.heldout_fraction)
    model = init_teacher(spec, cfg, split.image_size).to(device=device, dtype=dtype)
    ospec = cfg.optimizer_for(spec.arch)
    opt = ospec.torch(model.parameters())
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, list(ospec.milestones), ospec.gamma)  # as the authors'
    best = (-1.0, copy.deepcopy(model.state_dict()), -1)
    first_epoch = _first_epoch(resume_from, (spec.index,), f"teacher {spec.index}", cfg)
    if resume_from is not None:
        best = continue_teacher(resume_from, model, opt, schedule)
    steps = 0
    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        order = torch.as_tensor(epoch_order(spec, epoch, data.train_idx.numel()), device=device)
        for sl in _batches(order.numel(), cfg.batch_size):
            sel = order[sl]
            x = cpu_layout(normalization(split.images[data.train_idx[sel]], dtype))  # fastfree/layout.py
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), data.train_y[sel]).backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            steps += 1
            if progress is not None:
                progress(1)
            if max_steps is not None and steps >= max_steps:
                break
        schedule.step()
        model.eval()
        with torch.no_grad():
            correct = sum(
                (model(cpu_layout(normalization(split.images[data.heldout_idx[sl]], dtype))).argmax(-1)
                 == data.heldout_y[sl]).sum().item()
                for sl in _batches(data.heldout_idx.numel(), cfg.eval_batch)
            )
        acc = correct / data.heldout_idx.numel()
        if acc > best[0]:
            best = (acc, copy.deepcopy(model.state_dict()), epoch)
        if max_steps is not None and steps >= max_steps:
            break
        if stop is not None and stop.requested and epoch + 1 < cfg.epochs:  # asked to stop, epochs left: pause
            raise GroupPaused(pack_teacher(spec.index, epoch + 1, model, opt, best))
    return TrainedTeacher(spec, best[1], best[0], best[2])


def steps_per_epoch(split: ImageSplit, specs: list[TeacherSpec], cfg: PretrainConfig) -> dict[int, int]:
    """Each teacher's optimiser steps per epoch, by its index."""
    return {s.index: len(_batches(teacher_data(split, s, cfg.heldout_fraction).train_idx.numel(), cfg.batch_size))
            for s in specs}


def steps_trained_before(per_epoch: dict[int, int], epochs: int, done: Collection[int],
                         paused: list[GroupState]) -> int:
    """The teacher-steps an interrupted pretraining already took: all epochs of each finished teacher
    (`done`: their indices, or a dict keyed by them), the completed epochs of each paused one. A
    resumed run's progress bar starts there, so that its rate and time left count this run's steps
    only."""
    return sum(per_epoch[i] * epochs for i in done) + sum(
        per_epoch[i] * state.epochs_done for state in paused for i in state.indices if i not in done)


def _first_epoch(state: GroupState | None, indices: tuple[int, ...], what: str, cfg: PretrainConfig) -> int:
    """The epoch a trainer starts from: 0, or that after a paused `state`, which must be of these
    teachers (`what`, in the refusal), with epochs left."""
    if state is None:
        return 0
    if state.indices != indices or not 0 < state.epochs_done < cfg.epochs:
        raise FastFreeError(f"the saved state of teachers {list(state.indices)} after epoch {state.epochs_done} "
                            f"cannot continue {what} of {cfg.epochs} epochs: pass the state of these teachers")
    return state.epochs_done


class _Stopped(Exception):
    """Raised inside a side-by-side teacher's training when another one failed (or Ctrl-C)."""


def train_teachers_side_by_side(
    split: ImageSplit, normalization: Normalization, specs: list[TeacherSpec], cfg: PretrainConfig,
    dtype: torch.dtype = torch.float32, progress: Callable[[int], None] | None = None,
    on_trained: Callable[[list[TrainedTeacher]], None] | None = None, workers: int | None = None,
    max_steps: int | None = None, stop: StopRequest | None = None,
    paused: dict[int, GroupState] | None = None, on_paused: Callable[[GroupState], None] | None = None,
) -> list[TrainedTeacher]:
    """`train_teacher_reference` for each spec, `workers` teachers at a time (default: torch's thread
    count) in Python threads, torch at one intra-op thread in each. Each teacher is the reference's at
    one thread, bit for bit: its arithmetic and draws are its own (its seed, its data order).

    Why: a Conv4 step on a batch of 128 small images keeps two intra-op threads only partly busy
    (measured on a 2-core CPU, `pretrain --preset demo`: 1.46-1.79x the one-by-one loop at 2 threads).
    `on_trained` gets each teacher as it finishes (so an interrupted pool keeps it), called under a
    lock like `progress`. A teacher that fails, or a Ctrl-C, stops the others at their next step and
    the error is raised; the teachers finished before are kept by `on_trained`. Once `stop` is
    requested (fastfree.graceful_stop) no teacher starts and those under way stop at the end of their
    epoch (or finish, in their last), each paused one's state handed to `on_paused` (under the lock):
    the teachers not started or paused are left out of the list returned (in the specs' order).
    `paused` maps a teacher's index to such a state, from which it continues."""
    lock, abort = threading.Lock(), threading.Event()

    def step(k: int) -> None:  # every optimiser step of every teacher passes here: where an abort is seen
        if abort.is_set():
            raise _Stopped
        if progress is not None:
            with lock:
                progress(k)

    def one(spec: TeacherSpec) -> TrainedTeacher | None:
        if stop is not None and stop.requested:  # asked to stop: the teachers under way pause, no new one starts
            return None
        try:
            trained = train_teacher_reference(split, normalization, spec, cfg, dtype, max_steps, progress=step,
                                              stop=stop, resume_from=(paused or {}).get(spec.index))
        except GroupPaused as p:
            if on_paused is not None:
                with lock:
                    on_paused(p.state)
            return None
        if on_trained is not None:
            with lock:
                on_trained([trained])
        return trained

    if not specs or bound_to_this_thread():  # e.g. counted by FlopCounterMode, which sees its own thread only
        return [t for s in specs if (t := one(s)) is not None]
    with one_intra_op_thread() as threads:
        pool = ThreadPoolExecutor(min(workers or threads, len(specs)), thread_name_prefix="fastfree-pretrain")
        futures = [pool.submit(one, s) for s in specs]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                raise failed[0].exception()
        except BaseException:  # an error or a Ctrl-C: stop the running teachers, never start the others
            abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return [t for f in futures if (t := f.result()) is not None]


# --------------------------------------------------------------------------- batched
def train_teachers_batched(
    split: ImageSplit, normalization: Normalization, specs: list[TeacherSpec], cfg: PretrainConfig,
    dtype: torch.dtype = torch.float32, max_steps: int | None = None,
    progress: Callable[[int], None] | None = None, stop: StopRequest | None = None,
    resume_from: GroupState | None = None,
) -> list[TrainedTeacher]:
    """All `specs` (one architecture, equal training-set sizes) in one vmapped step each.

    `progress(k)` is called after each optimiser step with the number of teachers stepped. Once `stop`
    is requested, the group stops at the end of the epoch under way and raises GroupPaused with its
    state (unless that was the last epoch); `resume_from` (such a state, of these specs) continues it
    from the next epoch, equal to an uninterrupted run bit for bit (fastfree/pool/group_state.py).
    """
    if len({s.arch for s in specs}) != 1:
        raise FastFreeError("a batched run trains at least one teacher, all of one architecture: group the "
                            "specs by arch (pretrain_pool does)")
    optimizer = cfg.optimizer_for(specs[0].arch)
    device = split.device
    datas = [teacher_data(split, s, cfg.heldout_fraction) for s in specs]
    n_train = {d.train_idx.numel() for d in datas}
    n_held = {d.heldout_idx.numel() for d in datas}
    if len(n_train) != 1 or len(n_held) != 1:
        # Padding would change BatchNorm's batch statistics: group by size instead.
        raise FastFreeError("teachers trained together need equally many images; group them by size")
    models = [init_teacher(s, cfg, split.image_size).to(device=device, dtype=dtype) for s in specs]
    params, buffers = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    template = copy.deepcopy(models[0]).to("meta")
    del models

    train_idx = torch.stack([d.train_idx for d in datas])
    train_y = torch.stack([d.train_y for d in datas])
    held_idx = torch.stack([d.heldout_idx for d in datas])
    held_y = torch.stack([d.heldout_y for d in datas])
    n = train_idx.shape[1]

    def loss_fn(p, b, x, y):
        return F.cross_entropy(functional_call(template, (p, b), (x,)), y)

    step_fn = vmap(grad_and_value(loss_fn))
    forward = vmap(lambda p, b, x: functional_call(template, (p, b), (x,)))
    opt_state = optimizer.init(params)
    best_acc = torch.full((len(specs),), -1.0, dtype=torch.float64, device=device)
    best_epoch = torch.full((len(specs),), -1, dtype=torch.long, device=device)
    best_params = {k: v.clone() for k, v in params.items()}
    best_buffers = {k: v.clone() for k, v in buffers.items()}
    indices = tuple(s.index for s in specs)
    first_epoch = _first_epoch(resume_from, indices, f"the group {list(indices)}", cfg)
    if resume_from is not None:
        parts, opt_state, best_acc, best_epoch = unpack(
            resume_from, {"params": params, "buffers": buffers, "best_params": best_params,
                          "best_buffers": best_buffers}, opt_state, best_acc, best_epoch)
        params, buffers, best_params, best_buffers = (parts[p] for p in PARTS)
    steps = 0
    for epoch in range(first_epoch, cfg.epochs):
        template.train()
        order = torch.as_tensor(np.stack([epoch_order(s, epoch, n) for s in specs]), device=device)
        for sl in _batches(n, cfg.batch_size):
            sel = order[:, sl]
            x = normalization(split.images[torch.gather(train_idx, 1, sel)], dtype)
            grads, _ = step_fn(params, buffers, x, torch.gather(train_y, 1, sel))
            grads = clip_grad_norm_stacked(grads, cfg.clip_norm)
            params, opt_state = optimizer.step(params, grads, opt_state, epoch)
            steps += 1
            if progress is not None:
                progress(len(specs))
            if max_steps is not None and steps >= max_steps:
                break
        template.eval()
        with torch.no_grad():
            correct = torch.zeros(len(specs), dtype=torch.float64, device=device)
            for sl in _batches(held_idx.shape[1], cfg.eval_batch):
                logits = forward(params, buffers, normalization(split.images[held_idx[:, sl]], dtype))
                correct += (logits.argmax(-1) == held_y[:, sl]).sum(-1)
        acc = correct / held_idx.shape[1]
        better = acc > best_acc
        best_acc = torch.where(better, acc, best_acc)
        best_epoch = torch.where(better, torch.full_like(best_epoch, epoch), best_epoch)
        for src, dst in ((params, best_params), (buffers, best_buffers)):
            for k, v in src.items():
                mask = better.view(-1, *([1] * (v.dim() - 1)))
                dst[k] = torch.where(mask, v, dst[k])
        if max_steps is not None and steps >= max_steps:
            break
        if stop is not None and stop.requested and epoch + 1 < cfg.epochs:  # asked to stop, epochs left: pause
            raise GroupPaused(pack(indices, epoch + 1, {"params": params, "buffers": buffers, "best_params":
                                                        best_params, "best_buffers": best_buffers},
                                   opt_state, best_acc, best_epoch))
    accs, epochs = best_acc.tolist(), best_epoch.tolist()
    return [
        TrainedTeacher(
            spec,
            {k: v[i].detach().clone() for k, v in {**best_params, **best_buffers}.items()},
            accs[i], epochs[i],
        )
        for i, spec in enumerate(specs)
    ]


def pretrain_pool(
    split: ImageSplit, normalization: Normalization, specs: list[TeacherSpec], cfg: PretrainConfig,
    engine: str = "auto", dtype: torch.dtype = torch.float32,
    progress: Callable[[int], None] | None = None,
    done: dict[int, TrainedTeacher] | None = None,
    on_trained: Callable[[list[TrainedTeacher]], None] | None = None, stop: StopRequest | None = None,
    paused: list[GroupState] | None = None, on_paused: Callable[[GroupState], None] | None = None,
) -> list[TrainedTeacher]:
    """Train every teacher: batched in groups of `cfg.group_size`, one by one (reference), or the
    reference's teachers side by side in threads (threads: the same teachers as the reference at one
    thread; engine 'auto' picks it on a CPU with more than one torch thread).

    Batched, teachers are grouped by architecture (a vmapped step needs one) and training-set
    size. `progress(k)` gets the number of teacher-steps done (one per teacher and optimiser step),
    those of this call only: `steps_trained_before` counts the finished and paused teachers' earlier
    ones, where a progress bar starts.
    `done` holds teachers finished before (a resumed or grown pool): they are not trained again and
    the rest are grouped as they come. A resumed run's groups are those of an uninterrupted one
    (whole groups are saved; a kill while one is being written leaves part of it, and then its
    rest trains in a smaller group), so its teachers are the same bit for bit; the new teachers of a
    grown pool train in groups of their own: equal to training them with the old ones up to
    rounding. `on_trained` gets each newly trained group (or teacher) at once. Once `stop` is
    requested (fastfree.graceful_stop: Ctrl-C or SIGTERM), no teacher starts, and the teachers (or
    batched group) under way stop at the end of their epoch, each state handed to `on_paused` (those
    in their last epoch finish and go to `on_trained`); then StoppedBySignal is raised unless every
    teacher is trained. `paused` (such states) continue their teachers where they stopped.
    """
    stray = sorted({s.arch for s in specs} - set(cfg.archs))
    if stray:
        raise FastFreeError(f"teachers of architecture {', '.join(stray)} are not in the config's archs {cfg.archs}: "
                            "sample the specs with archs=cfg.archs")
    done = {s.index: done[s.index] for s in specs if done and s.index in done}
    engine = resolve_pool_engine(engine, split.device)
    todo = [s for s in specs if s.index not in done]
    paused_by = {p.indices: p for p in paused or []}
    kept: list[GroupState] = []  # the states paused by this call

    def keep(state: GroupState) -> None:
        kept.append(state)
        if on_paused is not None:
            on_paused(state)

    if engine == "threads":
        trained = {t.spec.index: t for t in train_teachers_side_by_side(
            split, normalization, todo, cfg, dtype, progress, on_trained, stop=stop,
            paused={i[0]: p for i, p in paused_by.items() if len(i) == 1}, on_paused=keep)}
        _stop_if_asked(stop, len(done) + len(trained), len(specs), kept, cfg.epochs)
        return [done[s.index] if s.index in done else trained[s.index] for s in specs]
    if engine == "reference":
        chunks = [[s] for s in todo]
    else:
        # group by architecture and training-set size (sizes are equal in CIFAR-FS and the built-in data)
        groups: dict[tuple[str, int], list[TeacherSpec]] = {}
        for s in todo:
            size = teacher_data(split, s, cfg.heldout_fraction).train_idx.numel()
            groups.setdefault((s.arch, size), []).append(s)
        chunks = [group[start : start + cfg.group_size] for group in groups.values()
                  for start in range(0, len(group), cfg.group_size)]
    trained: dict[int, TrainedTeacher] = dict(done)
    for chunk in chunks:
        _stop_if_asked(stop, len(trained), len(specs))
        ours = paused_by.get(tuple(s.index for s in chunk))
        try:
            if engine == "reference":
                new = [train_teacher_reference(split, normalization, chunk[0], cfg, dtype, progress=progress,
                                               stop=stop, resume_from=ours)]
            else:
                new = train_teachers_batched(split, normalization, chunk, cfg, dtype, progress=progress, stop=stop,
                                             resume_from=ours)
        except GroupPaused as p:
            keep(p.state)
            raise _stopped(stop, len(trained), len(specs), kept, cfg.epochs) from None
        if on_trained is not None:
            on_trained(new)
        trained.update({t.spec.index: t for t in new})
    return [trained[s.index] for s in specs]


# what a stop of `pretrain_pool` waits for, as the first signal's message says it
STOPPING_AFTER = "the epoch under way, with the teachers' state saved there"


def _stop_if_asked(stop: StopRequest | None, trained: int, total: int, paused: list[GroupState] = (),
                   epochs: int = 0) -> None:
    """StoppedBySignal if a stop was asked for and teachers are left to train (`paused`: the states
    of those stopped mid-way, saved, of `epochs` epochs)."""
    if stop is not None and stop.requested and trained < total:
        raise _stopped(stop, trained, total, paused, epochs)


def _stopped(stop: StopRequest, trained: int, total: int, paused: list[GroupState], epochs: int) -> StoppedBySignal:
    kept = f"with {trained} of {total} teachers trained" + (", each saved" if trained else "")
    return StoppedBySignal(stop.signum, trained, total, kept + (f", and {under_way(paused, epochs)}" if paused else ""))
