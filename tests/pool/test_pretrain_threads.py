"""Teachers side by side in threads (pretraining's CPU engine): the reference's teachers at one
thread, bit for bit; they really overlap; a failure stops the others; auto picks it on a CPU."""

import threading
import time

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.pool import pretrain
from fastfree.pool.pretrain import PretrainConfig, pretrain_pool, train_teacher_reference, train_teachers_side_by_side
from fastfree.pool.progress import fingerprint
from fastfree.pool.teachers import sample_teacher_specs
from fastfree.threads import torch_threads

CFG = PretrainConfig(teachers=3, epochs=2, batch_size=20)


def _one_thread_reference(split, specs, cfg):
    with torch_threads(1):
        return [train_teacher_reference(split, CIFAR100_NORM, s, cfg) for s in specs]


def _same(a, b):
    assert a.spec == b.spec and a.heldout_accuracy == b.heldout_accuracy and a.best_epoch == b.best_epoch
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict), a.spec.index


def test_side_by_side_teachers_are_the_one_thread_reference_bit_for_bit(tiny_split, monkeypatch):
    """float32, where a changed draw or sum shows. The teachers start together (a barrier they must reach
    at once, which one-by-one training never would), so their initialisations overlap too (the lock
    that keeps them apart is tested on its own below). Each trains at one intra-op thread; finished
    teachers reach on_trained one at a time."""
    specs = sample_teacher_specs(tiny_split.classes, 3, 5, seed=2)
    want = _one_thread_reference(tiny_split, specs, CFG)
    together, seen = threading.Barrier(3, timeout=30), []
    real = pretrain.train_teacher_reference

    def watched(*a, **kw):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        together.wait()
        return real(*a, **kw)

    monkeypatch.setattr(pretrain, "train_teacher_reference", watched)
    threads, finished, steps, inside = torch.get_num_threads(), [], [], threading.Lock()

    def on_trained(new):
        assert inside.acquire(blocking=False), "on_trained called by two threads at once"
        finished.extend(t.spec.index for t in new)
        time.sleep(0.01)
        inside.release()

    got = train_teachers_side_by_side(tiny_split, CIFAR100_NORM, specs, CFG, progress=steps.append,
                                      on_trained=on_trained, workers=3)
    for a, b in zip(got, want):
        _same(a, b)
    assert sorted(finished) == [s.index for s in specs]
    assert sum(steps) == 3 * 2 * 2  # teachers x epochs x steps (40 images, batch 20)
    assert len({name for name, _ in seen}) == 3 and all(n == 1 and name.startswith("fastfree-pretrain")
                                                        for name, n in seen)
    assert torch.get_num_threads() == threads


def test_a_failing_teacher_stops_the_others_and_its_error_is_raised(tiny_split, monkeypatch):
    specs = sample_teacher_specs(tiny_split.classes, 3, 5, seed=3)
    cfg = PretrainConfig(teachers=3, epochs=200, batch_size=20)  # 400 steps each: far longer than the test
    real, steps = pretrain.train_teacher_reference, []

    def first_fails(split, normalization, spec, *a, **kw):
        if spec.index == specs[0].index:
            time.sleep(0.2)  # the others are well under way
            raise RuntimeError("teacher failed")
        return real(split, normalization, spec, *a, **kw)

    monkeypatch.setattr(pretrain, "train_teacher_reference", first_fails)
    threads, start = torch.get_num_threads(), time.perf_counter()
    with pytest.raises(RuntimeError, match="teacher failed"):
        train_teachers_side_by_side(tiny_split, CIFAR100_NORM, specs, cfg, progress=steps.append, workers=3)
    assert 0 < sum(steps) < 2 * 400  # the others stopped at their next step
    assert torch.get_num_threads() == threads
    assert time.perf_counter() - start < 60


def test_pretrain_pool_threads_keeps_done_teachers_and_the_specs_order(tiny_split):
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=5)
    want = _one_thread_reference(tiny_split, specs, CFG)
    done = {specs[1].index: want[1]}
    trained = []
    got = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "threads", done=done,
                        on_trained=lambda new: trained.extend(t.spec.index for t in new))
    assert got[1] is want[1] and sorted(trained) == sorted(s.index for s in specs if s.index != specs[1].index)
    for a, b in zip(got, want):
        _same(a, b)
    # a pool whose teachers are all done trains nothing
    again = pretrain_pool(tiny_split, CIFAR100_NORM, specs, CFG, "threads", done={t.spec.index: t for t in got})
    assert all(a is b for a, b in zip(again, got, strict=True))


def test_the_threads_engine_is_recorded_as_the_reference():
    """Its teachers are the reference's: so either engine continues the other's interrupted pool."""
    assert fingerprint(CFG.to_dict(), "d", {}, 32, {}, "float32", "threads") == \
        fingerprint(CFG.to_dict(), "d", {}, 32, {}, "float32", "reference")


def test_teachers_initialised_in_threads_at_once_draw_from_their_own_seeds(tiny_split):
    """init_teacher seeds torch's process-wide generator: threads doing it at once would draw from each
    other's seeds without its lock (seen: 1 in 3 side-by-side pools differed)."""
    specs = sample_teacher_specs(tiny_split.classes, 4, 5, seed=6)
    want = [pretrain.init_teacher(s, CFG, 32).state_dict() for s in specs]
    together, got = threading.Barrier(4, timeout=30), {}

    def init_many(i):
        together.wait()
        got[i] = [pretrain.init_teacher(specs[i], CFG, 32).state_dict() for _ in range(20)]

    workers = [threading.Thread(target=init_many, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i, inits in got.items():
        assert all(torch.equal(sd[k], want[i][k]) for sd in inits for k in sd), specs[i].index
