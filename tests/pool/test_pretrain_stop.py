"""Pretraining asked to stop (Ctrl-C or SIGTERM through fastfree.graceful_stop): the teachers under way
finish and are saved, no other starts, StoppedBySignal says how many are kept, and continuing from them
gives the pool an uninterrupted run gives, bit for bit. The request is set by hand here, as the first
signal's handler sets it (the handlers themselves: tests/test_graceful_stop.py)."""

import signal
import threading
from dataclasses import replace

import pytest

from fastfree.data.split import CIFAR100_NORM
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


@pytest.mark.parametrize("engine, kept", [("reference", 1), ("batched", 2)])
def test_the_teacher_or_group_under_way_finishes_and_is_saved(tiny_split, engine, kept):
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=7)
    straight = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, engine)
    stop, saved = StopRequest(), []
    with pytest.raises(StoppedBySignal) as stopped:
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, engine, progress=_asked_at_first_step(stop),
                      on_trained=saved.extend, stop=stop)
    assert str(stopped.value) == f"stopped by SIGTERM with {kept} of 4 teachers trained, each saved"
    assert stopped.value.exit_code == 143 and stopped.value.then.endswith("--resume to continue")
    assert [t.spec.index for t in saved] == [s.index for s in specs[:kept]]
    # continued from the saved teachers (as `pretrain --resume` does): the uninterrupted pool
    resumed = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, engine, done={t.spec.index: t for t in saved})
    for a, b in zip(resumed, straight, strict=True):
        _same(a, b)


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


@pytest.mark.parametrize("engine", ["reference", "batched", "threads"])
def test_asked_during_the_last_teachers_the_pool_is_simply_finished(tiny_split, engine):
    """Nothing left to skip: the pool is returned whole, and its command saves it as usual."""
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=10)
    done = {specs[0].index: pretrain_pool(tiny_split, CIFAR100_NORM, specs[:1], CFG, "reference")[0]}
    stop = StopRequest()
    got = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, engine, progress=_asked_at_first_step(stop, skip=1),
                        done=done, stop=stop)
    assert stop.requested and [t.spec.index for t in got] == [s.index for s in specs]


def test_without_a_request_nothing_changes(tiny_split):
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=11)
    a = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference", stop=StopRequest())
    b = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "reference")
    for x, y in zip(a, b, strict=True):
        _same(x, y)
