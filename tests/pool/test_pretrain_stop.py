"""Pretraining asked to stop (Ctrl-C or SIGTERM through fastfree.graceful_stop): no teacher starts, the
teachers under way (one by one, side by side, or a batched group) stop at the end of their epoch with
their state saved (those in their last epoch finish), StoppedBySignal says what is kept, and continuing
from it gives the pool an uninterrupted run gives, bit for bit. The request is set by hand here, as the
first signal's handler sets it (the handlers themselves: tests/test_graceful_stop.py)."""

import signal
import threading
from dataclasses import replace

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.graceful_stop import StoppedBySignal, StopRequest
from fastfree.pool import pretrain
from fastfree.pool.group_state import GroupState
from fastfree.pool.pretrain import (PretrainConfig, pretrain_pool, steps_per_epoch, steps_trained_before,
                                    train_teachers_side_by_side)
from fastfree.pool.teachers import sample_teacher_specs
from tests.pool.test_pretrain_threads import _one_thread_reference, _same

CFG = PretrainConfig(teachers=4, epochs=2, batch_size=20, group_size=2)  # tiny_split: 2 steps an epoch


def _asked_at(stop: StopRequest, call: int):
    """A progress callback: the signal arrives during the `call`-th call (1-based; one per optimiser step
    this run takes)."""
    calls = []

    def progress(k):
        calls.append(k)
        if len(calls) == call:
            stop.signum = signal.SIGTERM
    return progress


@pytest.mark.parametrize("engine", ["reference", "batched"])
@pytest.mark.parametrize("arch", ["conv4", "resnet10"])  # Adam's state (moments and step count), SGD's (momentum)
def test_the_teachers_under_way_stop_at_their_epochs_end_and_continue_bit_for_bit(tiny_split, engine, arch):
    """float32, where any changed draw, rate or sum shows: 3 teachers of 4 epochs, stopped in the second
    epoch (of the first teacher, or of the group of 3), paused after it with nothing saved as a teacher,
    and continued from that state; every teacher equals the uninterrupted run's, and the continued run's
    steps with those the paused one took (`steps_trained_before`) are the uninterrupted run's. SGD's rate
    drops at the pause and once more after it."""
    cfg = PretrainConfig(teachers=3, archs=(arch,), width=4, epochs=4, batch_size=20, group_size=3,
                         resnet_milestones=(2, 3))
    specs = sample_teacher_specs(tiny_split.classes, 3, 5, seed=12, archs=cfg.archs)
    straight_steps = []
    straight = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, engine, progress=straight_steps.append)
    stop, saved, paused = StopRequest(), [], []
    with pytest.raises(StoppedBySignal) as stopped:
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, engine, progress=_asked_at(stop, 3),
                      on_trained=saved.extend, stop=stop, on_paused=paused.append)
    n = 1 if engine == "reference" else 3
    assert str(stopped.value) == f"stopped by SIGTERM with 0 of 3 teachers trained, and the {n} under way saved " \
                                 "after epoch 2 of 4"
    assert stopped.value.then.endswith("--resume to continue") and saved == []
    (state,) = paused
    assert state.indices == tuple(s.index for s in specs[:n]) and state.epochs_done == 2
    assert all(v.device.type == "cpu" for v in state.tensors.values())
    steps = []
    resumed = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, engine, progress=steps.append, paused=[state])
    for a, b in zip(resumed, straight, strict=True):
        _same(a, b)
    # one call per step this run takes (its bar starts at the steps taken before)
    before = steps_trained_before(steps_per_epoch(tiny_split, specs, cfg), cfg.epochs, {}, [state])
    assert before == n * 2 * 2 and 0 < len(steps) and sum(steps) + before == sum(straight_steps)
    assert set(steps) == {1 if engine == "reference" else 3}
    # the teachers returned are each one's best epoch, which may come before the pause: compare the whole
    # state (weights, optimiser, best so far) one epoch after it, continued and uninterrupted (the state
    # is used a second time here: the first continuation must not have changed it)
    later = []
    for kwargs, call in (({}, 5), ({"paused": [state]}, 1)):
        stop = StopRequest()
        with pytest.raises(StoppedBySignal, match="after epoch 3 of 4"):
            pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, engine, progress=_asked_at(stop, call), stop=stop,
                          on_paused=later.append, **kwargs)
    assert later[0].tensors.keys() == later[1].tensors.keys() and len(later[0].tensors) > 2 * len(straight[0].state_dict)
    for k, v in later[0].tensors.items():
        assert torch.equal(v, later[1].tensors[k]), k


@pytest.mark.parametrize("engine, kept", [("reference", 1), ("batched", 2)])
def test_a_stop_in_the_last_epoch_lets_the_teachers_under_way_finish(tiny_split, engine, kept):
    """Nothing to pause: the teacher (or group of 2) is saved and the next does not start."""
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=13)
    stop, saved, paused = StopRequest(), [], []
    with pytest.raises(StoppedBySignal) as stopped:
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, engine, progress=_asked_at(stop, 3),
                      on_trained=saved.extend, stop=stop, on_paused=paused.append)
    assert str(stopped.value) == f"stopped by SIGTERM with {kept} of 4 teachers trained, each saved"
    assert [t.spec.index for t in saved] == [s.index for s in specs[:kept]] and paused == []


def test_a_paused_state_continues_only_its_own_teachers(tiny_split):
    """A state whose teachers are not those of a group is not used for it (here: the second group's
    state, while the first trains), and handed to a group or a teacher directly it is refused."""
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=14)
    cfg3 = replace(CFG, epochs=3)
    stop, paused = StopRequest(), []
    with pytest.raises(StoppedBySignal):
        pretrain_pool(tiny_split, CIFAR100_NORM, specs[2:], cfg3, "batched", progress=_asked_at(stop, 1), stop=stop,
                      on_paused=paused.append)
    straight = pretrain_pool(tiny_split, CIFAR100_NORM, specs[:2], cfg3, "batched")
    for a, b in zip(pretrain_pool(tiny_split, CIFAR100_NORM, specs[:2], cfg3, "batched", paused=paused),
                    straight, strict=True):
        _same(a, b)
    with pytest.raises(FastFreeError, match=r"cannot continue the group \[\d+, \d+\] of 3 epochs: pass the state"):
        pretrain.train_teachers_batched(tiny_split, CIFAR100_NORM, specs[:2], cfg3, resume_from=paused[0])
    with pytest.raises(FastFreeError, match="does not fit its teachers"):  # another width: other shapes
        pretrain.train_teachers_batched(tiny_split, CIFAR100_NORM, specs[2:], replace(cfg3, width=8),
                                        resume_from=paused[0])
    with pytest.raises(FastFreeError, match=r"cannot continue teacher \d+ of 3 epochs: pass the state"):
        pretrain.train_teacher_reference(tiny_split, CIFAR100_NORM, specs[2], cfg3, resume_from=paused[0])
    one, stop = [], StopRequest()
    with pytest.raises(StoppedBySignal):
        pretrain_pool(tiny_split, CIFAR100_NORM, specs[:1], cfg3, "reference", progress=_asked_at(stop, 1),
                      stop=stop, on_paused=one.append)
    with pytest.raises(FastFreeError, match=f"saved state of teacher {specs[0].index} does not fit it"):
        pretrain.train_teacher_reference(tiny_split, CIFAR100_NORM, specs[0], replace(cfg3, width=8),
                                         resume_from=one[0])


def test_side_by_side_the_teachers_under_way_pause_and_no_other_starts(tiny_split, monkeypatch):
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=8)
    together, started = threading.Barrier(2, timeout=30), []  # both workers have a teacher before the stop
    real = pretrain.train_teacher_reference

    def watched(split, normalization, spec, *a, **kw):
        started.append(spec.index)
        together.wait()
        return real(split, normalization, spec, *a, **kw)

    monkeypatch.setattr(pretrain, "train_teacher_reference", watched)
    stop, saved, paused = StopRequest(), [], []
    got = train_teachers_side_by_side(tiny_split, CIFAR100_NORM, specs, CFG, progress=_asked_at(stop, 1),
                                      on_trained=saved.extend, workers=2, stop=stop, on_paused=paused.append)
    assert sorted(started) == sorted(s.index for s in specs[:2])  # the other two never started
    assert got == [] and saved == [] and sorted(p.indices for p in paused) == sorted((s.index,) for s in specs[:2])
    assert {p.epochs_done for p in paused} == {1}
    monkeypatch.setattr(pretrain, "train_teacher_reference", real)
    again = train_teachers_side_by_side(tiny_split, CIFAR100_NORM, specs[:2], CFG, workers=2,
                                        paused={p.indices[0]: p for p in paused})
    for a, b in zip(again, _one_thread_reference(tiny_split, specs[:2], CFG), strict=True):
        _same(a, b)  # continued: each is the one-thread reference's teacher, bit for bit


def test_side_by_side_pool_raises_with_the_teachers_kept_and_continues_bit_for_bit(tiny_split):
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=9)
    cfg = replace(CFG, group_size=100)
    straight = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "threads")
    stop, saved, paused = StopRequest(), [], []
    with pytest.raises(StoppedBySignal, match=r"^stopped by SIGTERM with 0 of 4 teachers trained, and the [12] under "
                                              r"way saved after epoch 1 of 2$"):
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "threads", progress=_asked_at(stop, 1),
                      on_trained=saved.extend, stop=stop, on_paused=paused.append)
    assert saved == [] and 1 <= len(paused) < 4  # as many as torch has threads (workers), at most
    resumed = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "threads", paused=paused)
    for a, b in zip(resumed, straight, strict=True):
        _same(a, b)


@pytest.mark.parametrize("engine", ["reference", "batched", "threads"])
def test_asked_during_the_last_teachers_last_epoch_the_pool_is_simply_finished(tiny_split, engine):
    """Nothing left to skip: the pool is returned whole, and its command saves it as usual."""
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=10)
    done = {specs[0].index: pretrain_pool(tiny_split, CIFAR100_NORM, specs[:1], CFG, "reference")[0]}
    stop = StopRequest()
    # the 3rd call is the first step of the last teacher's last epoch
    got = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, engine, progress=_asked_at(stop, 3), done=done,
                        stop=stop)
    assert stop.requested and [t.spec.index for t in got] == [s.index for s in specs]


def test_without_a_request_nothing_changes(tiny_split):
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=11)
    a = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference", stop=StopRequest())
    b = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference")
    for x, y in zip(a, b, strict=True):
        _same(x, y)


def test_the_steps_trained_before_count_finished_teachers_whole_and_paused_ones_to_their_pause():
    """A paused state's teacher that finished since counts once, as finished."""
    paused = [GroupState((2, 3), 1, {}), GroupState((4,), 0, {}), GroupState((0,), 1, {})]
    per_epoch = {0: 3, 1: 4, 2: 5, 3: 6, 4: 7}
    assert steps_trained_before(per_epoch, 4, {0: None}, paused) == 3 * 4 + (5 + 6) * 1
    assert steps_trained_before(per_epoch, 4, {}, []) == 0
