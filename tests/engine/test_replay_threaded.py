"""The engine's replay on a CPU: the meta-batch's tasks side by side in threads equal the
sequential reference at one thread, bit for bit, and the tasks really overlap."""

import threading

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.engine import replay as engine_replay
from fastfree.engine.options import EngineOptions
from fastfree.engine.replay import maml_meta_batch_threaded
from fastfree.engine.trainer import FastEngine
from fastfree.free.replay import ReplayConfig, maml_meta_batch_reference
from fastfree.models import Conv4
from fastfree.threads import one_intra_op_thread, torch_threads
from tests.engine.test_replay import assert_same, learner
from tests.free.helpers import filled_bank


def _meta_batch(tasks: int, seed: int, dtype=torch.float32):
    batch = filled_bank(seed=seed, dtype=dtype).sample_tasks(tasks, 3, 2, 3, torch.Generator().manual_seed(seed))
    return learner(seed, dtype), batch


def _reference_at_one_thread(model, batch, cfg):
    with torch_threads(1):
        return maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg)


@pytest.mark.parametrize("second_order", [True, False])
def test_threaded_meta_batch_is_the_one_thread_reference_bit_for_bit(second_order, monkeypatch):
    """float32, where any change in the arithmetic shows: each task at one intra-op thread in its own
    thread, gradients summed in task order. A barrier the first tasks must reach together fails the
    test if they run one after another; each task sees one torch thread."""
    model, batch = _meta_batch(5, seed=1)
    model.classifier.bias.requires_grad_(False)  # a frozen parameter: no gradient in either
    cfg = ReplayConfig(meta_batch=5, ways=3, shots=2, queries=3, inner_steps=2, inner_lr=0.3, second_order=second_order)
    want = _reference_at_one_thread(model, batch, cfg)
    workers, seen, lock = 3, [], threading.Lock()
    together = threading.Barrier(workers, timeout=30)  # sequential tasks would never meet here
    real = engine_replay.task_outer_gradient

    def watched(template, *a, **kw):
        with lock:
            seen.append((threading.current_thread().name, torch.get_num_threads(), template))  # held: ids of freed modules recur
            first = len(seen) <= workers
        if first:
            together.wait()
        return real(template, *a, **kw)

    monkeypatch.setattr(engine_replay, "task_outer_gradient", watched)
    threads = torch.get_num_threads()
    grads, loss, accuracy = maml_meta_batch_threaded(model, batch, CIFAR100_NORM, cfg, workers=workers)
    assert set(grads) == set(want[0]) and "classifier.bias" not in grads
    assert all(torch.equal(grads[n], want[0][n]) for n in grads)
    assert torch.equal(loss, want[1]) and torch.equal(accuracy, want[2])
    assert len(seen) == 5 and all(n == 1 for _, n, _ in seen)
    assert len({name for name, _, _ in seen}) == workers and all(name.startswith("fastfree-replay") for name, _, _ in seen)
    assert len({id(t) for _, _, t in seen}) == 5  # a module per task: functional_call swaps parameters in place
    assert torch.get_num_threads() == threads
    assert all(p.grad is None for p in model.parameters())


def test_threaded_meta_batch_equals_the_reference_float64():
    model, batch = _meta_batch(3, seed=2, dtype=torch.float64)
    cfg = ReplayConfig(meta_batch=3, ways=3, shots=2, queries=3, inner_steps=3, inner_lr=0.3)
    assert_same(maml_meta_batch_threaded(model, batch, CIFAR100_NORM, cfg, workers=2),
                maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg))


def test_one_worker_runs_the_reference_in_the_callers_thread(monkeypatch):
    model, batch = _meta_batch(2, seed=3)
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=2, queries=3, inner_steps=1, inner_lr=0.3)
    names = []
    real = engine_replay.task_outer_gradient
    monkeypatch.setattr(engine_replay, "task_outer_gradient",
                        lambda *a, **kw: names.append(threading.current_thread().name) or real(*a, **kw))
    got = maml_meta_batch_threaded(model, batch, CIFAR100_NORM, cfg, workers=1)
    assert names == [threading.current_thread().name] * 2
    with one_intra_op_thread():  # bit for bit at one thread, as it runs: float32 rounds with the thread count
        want = maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg)
    assert all(torch.equal(got[0][n], want[0][n]) for n in want[0]) and torch.equal(got[1], want[1])


def test_the_fast_engine_replays_in_threads_on_a_cpu_and_vmapped_where_it_vectorises():
    teachers = [Conv4(num_classes=3, width=4, image_size=16).eval() for _ in range(2)]
    cpu = torch.device("cpu")
    assert FastEngine(teachers, EngineOptions.for_device(cpu), cpu).meta_batch_fn is maml_meta_batch_threaded
    vectorized = FastEngine(teachers, EngineOptions.for_device(cpu, vectorize=True), cpu)
    assert vectorized.meta_batch_fn is engine_replay.maml_meta_batch_fast


def test_the_profilers_flop_count_sees_the_threaded_meta_batch():
    """`fastfree profile run` counts each phase's FLOPs with a dispatch mode, which sees its own thread
    only: the tasks then stay in the caller's thread and count as the reference's do."""
    from fastfree.profiling.flops import GlobalFlopCounter

    model, batch = _meta_batch(3, seed=4)
    cfg = ReplayConfig(meta_batch=3, ways=3, shots=2, queries=3, inner_steps=2, inner_lr=0.3)
    counts = []
    for fn in (maml_meta_batch_reference, lambda *a: maml_meta_batch_threaded(*a, workers=3)):
        with GlobalFlopCounter() as counter:
            fn(model, batch, CIFAR100_NORM, cfg)
        counts.append(counter.get_total_flops())
    assert counts[0] > 0 and counts[1] == counts[0]
