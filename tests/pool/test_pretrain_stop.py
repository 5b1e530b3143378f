"""Pretraining asked to stop (Ctrl-C or SIGTERM through fastfree.graceful_stop): the teachers under way
finish and are saved (a batched group stops at its epoch's end instead, its state saved), no other
starts, StoppedBySignal says what is kept, and continuing from it gives the pool an uninterrupted run
gives, bit for bit. The request is set by hand here, as the first signal's handler sets it (the
handlers themselves: tests/test_graceful_stop.py)."""

import signal
import threading
from dataclasses import replace

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.graceful_stop import StoppedBySignal, StopRequest
from fastfree.pool import pretrain
from fastfree.pool.pretrain import PretrainConfig, pretrain_pool, train_teachers_side_by_side
from fastfree.pool.teachers import sample_teacher_specs
from tests.pool.test_pretrain_threads import _one_thread_reference, _same

CFG = PretrainConfig(teachers=4, epochs=2, batch_size=20, group_size=2)


def _asked_at_first_step(stop: StopRequest, skip: int = 0):
    """A progress callback: the signal arrives during the first optimiser step of the first teacher(s),
    after `skip` calls (a resumed pool's first call counts the steps its finished teachers took)."""
    calls = []

    def progress(k):
        calls.append(k)
        if len(calls) > skip and stop.signum is None:
            stop.signum = signal.SIGTERM
    return progress


def test_the_teacher_under_way_finishes_and_is_saved(tiny_split):
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=7)
    straight = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference")
    stop, saved = StopRequest(), []
    with pytest.raises(StoppedBySignal) as stopped:
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference", progress=_asked_at_first_step(stop),
                      on_trained=saved.extend, stop=stop)
    assert str(stopped.value) == "stopped by SIGTERM with 1 of 4 teachers trained, each saved"
    assert stopped.value.exit_code == 143 and stopped.value.then.endswith("--resume to continue")
    assert [t.spec.index for t in saved] == [specs[0].index]
    # continued from the saved teachers (as `pretrain --resume` does): the uninterrupted pool
    resumed = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference", done={t.spec.index: t for t in saved})
    for a, b in zip(resumed, straight, strict=True):
        _same(a, b)


def _stopped_at(stop: StopRequest, step: int):
    """A progress callback: the signal arrives during optimiser step `step` (1-based) of the run."""
    calls = []

    def progress(k):
        calls.append(k)
        if len(calls) == step:
            stop.signum = signal.SIGTERM
    return progress


@pytest.mark.parametrize("arch", ["conv4", "resnet10"])  # Adam's state (moments and step count), SGD's (momentum)
def test_a_batched_group_stops_at_its_epochs_end_and_continues_bit_for_bit(tiny_split, arch):
    """float32, where any changed draw, rate or sum shows: the group of 3 (2 steps an epoch) is stopped
    in its second epoch (of 4), paused after it with nothing of it saved as a teacher, and continued from that state; every
    teacher equals the uninterrupted group's, and the continued run counts the steps the paused one took."""
    cfg = PretrainConfig(teachers=3, archs=(arch,), width=4, epochs=4, batch_size=20, group_size=3,
                         resnet_milestones=(2,))  # SGD's rate changes after the pause
    specs = sample_teacher_specs(tiny_split.classes, 3, 5, seed=12, archs=cfg.archs)
    straight_steps = []
    straight = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", progress=straight_steps.append)
    stop, saved, paused = StopRequest(), [], []
    with pytest.raises(StoppedBySignal) as stopped:
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", progress=_stopped_at(stop, 3),
                      on_trained=saved.extend, stop=stop, on_paused=paused.append)
    assert str(stopped.value) == "stopped by SIGTERM with 0 of 3 teachers trained, and the 3 under way saved " \
                                 "after epoch 2 of 4"
    assert stopped.value.then.endswith("--resume to continue") and saved == []
    (state,) = paused
    assert state.indices == tuple(s.index for s in specs) and state.epochs_done == 2
    assert all(v.device.type == "cpu" for v in state.tensors.values())
    steps = []
    resumed = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", progress=steps.append, paused=state)
    for a, b in zip(resumed, straight, strict=True):
        _same(a, b)
    assert sum(steps) == sum(straight_steps)  # the paused epochs counted at once, then one call per step
    # the teachers returned are each one's best epoch, which may come before the pause: compare the whole
    # state (weights, optimiser, best so far) one epoch after it, continued and uninterrupted
    later = []
    for kwargs in ({}, {"paused": state}):
        stop = StopRequest()
        with pytest.raises(StoppedBySignal, match="after epoch 3 of 4"):
            pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", progress=_stopped_at(stop, 5 - 4 * bool(kwargs)),
                          stop=stop, on_paused=later.append, **kwargs)
    assert later[0].tensors.keys() == later[1].tensors.keys() and len(later[0].tensors) > 2 * len(straight[0].state_dict)
    for k, v in later[0].tensors.items():
        assert torch.equal(v, later[1].tensors[k]), k


def test_a_stop_in_a_groups_last_epoch_lets_it_finish(tiny_split):
    """Nothing to pause: the group is saved as teachers and the next group does not start."""
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=13)  # CFG: 2 groups of 2, 2 epochs of 2 steps
    stop, saved, paused = StopRequest(), [], []
    with pytest.raises(StoppedBySignal) as stopped:
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "batched", progress=_stopped_at(stop, 3),
                      on_trained=saved.extend, stop=stop, on_paused=paused.append)
    assert str(stopped.value) == "stopped by SIGTERM with 2 of 4 teachers trained, each saved"
    assert [t.spec.index for t in saved] == [s.index for s in specs[:2]] and paused == []


def test_a_paused_state_continues_only_its_own_group(tiny_split):
    """A state whose teachers are not those of a group is not used for it (here: the second group's
    state, while the first trains), and handed to the group directly it is refused."""
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=14)
    stop, paused = StopRequest(), []
    with pytest.raises(StoppedBySignal):
        pretrain_pool(tiny_split, CIFAR100_NORM, specs[2:], replace(CFG, epochs=3), "batched",
                      progress=_stopped_at(stop, 1), stop=stop, on_paused=paused.append)
    cfg3 = replace(CFG, epochs=3)
    straight = pretrain_pool(tiny_split, CIFAR100_NORM, specs[:2], cfg3, "batched")
    for a, b in zip(pretrain_pool(tiny_split, CIFAR100_NORM, specs[:2], cfg3, "batched", paused=paused[0]),
                    straight, strict=True):
        _same(a, b)
    with pytest.raises(FastFreeError, match=r"cannot continue the group \[\d+, \d+\] of 3 epochs: pass the state"):
        pretrain.train_teachers_batched(tiny_split, CIFAR100_NORM, specs[:2], cfg3, resume_from=paused[0])
    with pytest.raises(FastFreeError, match="does not fit its teachers"):  # another width: other shapes
        pretrain.train_teachers_batched(tiny_split, CIFAR100_NORM, specs[2:], replace(cfg3, width=8),
                                        resume_from=paused[0])


def test_side_by_side_the_teachers_under_way_finish_and_no_other_starts(tiny_split, monkeypatch):
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=8)
    together, started = threading.Barrier(2, timeout=30), []  # both workers have a teacher before the stop
    real = pretrain.train_teacher_reference

    def watched(split, normalization, spec, *a, **kw):
        started.append(spec.index)
        together.wait()
        return real(split, normalization, spec, *a, **kw)

    monkeypatch.setattr(pretrain, "train_teacher_reference", watched)
    stop, saved = StopRequest(), []
    got = train_teachers_side_by_side(tiny_split, CIFAR100_NORM, specs, CFG, progress=_asked_at_first_step(stop),
                                      on_trained=saved.extend, workers=2, stop=stop)
    assert sorted(started) == sorted(s.index for s in specs[:2])  # the other two never started
    assert [t.spec.index for t in got] == [s.index for s in specs[:2]] and len(saved) == 2
    monkeypatch.setattr(pretrain, "train_teacher_reference", real)
    for a, b in zip(got, _one_thread_reference(tiny_split, specs[:2], CFG), strict=True):
        _same(a, b)  # finished, not cut off: each is the one-thread reference's teacher, bit for bit


def test_side_by_side_pool_raises_with_the_teachers_kept_and_continues_bit_for_bit(tiny_split):
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=9)
    cfg = replace(CFG, group_size=100)
    straight = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "threads")
    stop, saved = StopRequest(), []
    with pytest.raises(StoppedBySignal, match=r"stopped by SIGTERM with [12] of 4 teachers trained, each saved"):
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "threads", progress=_asked_at_first_step(stop),
                      on_trained=saved.extend, stop=stop)
    assert 1 <= len(saved) < 4  # as many as torch has threads (workers), at most
    resumed = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "threads", done={t.spec.index: t for t in saved})
    for a, b in zip(resumed, straight, strict=True):
        _same(a, b)


# after the call counting the finished teacher's steps: the last teacher's first step (batched: the first
# step of its group's last epoch, 2 steps an epoch)
@pytest.mark.parametrize("engine, skip", [("reference", 1), ("batched", 3), ("threads", 1)])
def test_asked_during_the_last_teachers_the_pool_is_simply_finished(tiny_split, engine, skip):
    """Nothing left to skip: the pool is returned whole, and its command saves it as usual."""
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=10)
    done = {specs[0].index: pretrain_pool(tiny_split, CIFAR100_NORM, specs[:1], CFG, "reference")[0]}
    stop = StopRequest()
    got = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, engine, progress=_asked_at_first_step(stop, skip=skip),
                        done=done, stop=stop)
    assert stop.requested and [t.spec.index for t in got] == [s.index for s in specs]


def test_without_a_request_nothing_changes(tiny_split):
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=11)
    a = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference", stop=StopRequest())
    b = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference")
    for x, y in zip(a, b, strict=True):
        _same(x, y)
