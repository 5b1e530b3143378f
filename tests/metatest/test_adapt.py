"""The vmapped meta-test equals the sequential reference (float64), and the protocol's maths."""

import numpy as np
import pytest
import torch

from fastfree.data.episodes import EpisodeSampler, EpisodeSpec
from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.metatest.adapt import (
    adapted_query_logits_batched,
    adapted_query_logits_reference,
    adapted_query_logits_threaded,
    query_accuracy,
)
from fastfree.metatest.initializations import average_init, best_model_init, random_init
from fastfree.metatest.protocol import MetaTestConfig, confidence_interval, run_metatest
from fastfree.models import Conv4, build_model
from fastfree.threads import torch_threads
from tests.conftest import DEVICES


def _builder():
    return build_model("conv4", 5, 8, 32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shots", [1, 3])
def test_batched_adaptation_equals_sequential_float64(tiny_split, shots, device):
    init = random_init(_builder, seed=0)
    tiny_split = tiny_split.to(device)
    batch = EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(5, shots, 2), seed=0).batch(range(4), torch.float64)
    params = init.for_tasks(range(4), torch.device(device), torch.float64)
    template = init.template.double().to(device)
    ref = adapted_query_logits_reference(template, params, batch, steps=3, lr=0.05)
    got = adapted_query_logits_batched(template, params, batch, steps=3, lr=0.05)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # adaptation actually changed the predictions (a test that could fail)
    unadapted = adapted_query_logits_batched(template, params, batch, steps=0, lr=0.05)
    assert (unadapted - ref).abs().max() > 1e-3


def test_the_cpu_layout_is_channels_last_and_changes_only_rounding(tiny_split, monkeypatch):
    """On a CPU the per-task path adapts and predicts channels-last (fastfree.layout, about 2x faster on
    5-shot tasks): the same logits as the contiguous layout, in float64."""
    from fastfree.metatest import adapt

    x = torch.rand(2, 3, 8, 8)
    assert adapt.cpu_layout(x).is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
        memory_format=torch.channels_last)
    init = random_init(_builder, seed=0)
    batch = EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(5, 3, 2), seed=0).batch(range(3), torch.float64)
    params = init.for_tasks(range(3), torch.device("cpu"), torch.float64)
    template = init.template.double()
    seen = []
    real = adapt.cpu_layout
    monkeypatch.setattr(adapt, "cpu_layout", lambda t: seen.append(t.shape) or real(t))
    channels_last = adapted_query_logits_reference(template, params, batch, steps=3, lr=0.05)
    assert len(seen) == 6  # each task's support and query
    monkeypatch.setattr(adapt, "cpu_layout", lambda t: t)
    contiguous = adapted_query_logits_reference(template, params, batch, steps=3, lr=0.05)
    torch.testing.assert_close(channels_last, contiguous, rtol=1e-12, atol=1e-12)


def test_protocol_engines_agree_and_same_seed_same_tasks(tiny_split):
    init = random_init(_builder, seed=1)
    kw = dict(tasks=6, chunk=4, shots=(1, 2), queries=2, steps=2)
    a = run_metatest(init, tiny_split, CIFAR100_NORM, MetaTestConfig(engine="batched", **kw), torch.float64)
    b = run_metatest(init, tiny_split, CIFAR100_NORM, MetaTestConfig(engine="reference", chunk=6,
                                                                     **{k: v for k, v in kw.items() if k != "chunk"}),
                     torch.float64)
    c = run_metatest(init, tiny_split, CIFAR100_NORM, MetaTestConfig(engine="threads", **kw), torch.float64)
    assert [r.accuracies for r in a] == [r.accuracies for r in b] == [r.accuracies for r in c]
    assert [r.shots for r in a] == [1, 2] and all(r.tasks == 6 for r in a)


def test_the_threads_engine_gives_each_task_the_same_logits_whatever_the_chunk(tiny_split):
    """A chunk of one task (`--chunk 1`, or 51 tasks in chunks of 50) runs in the caller's thread; it ran at
    torch's threads there, other arithmetic than among others at one, and a task's accuracy could move
    with the chunk size (a Random learner's 5-shot did, on the demo's data). Float32, 2 torch threads."""
    template, params, batch = _float32_tasks(tiny_split, 3)
    with torch_threads(2):
        together = adapted_query_logits_threaded(template, params, batch, steps=3, lr=0.05)
        alone = [adapted_query_logits_threaded(template, {k: v[t:t + 1] for k, v in params.items()},
                                               batch.task(t), steps=3, lr=0.05) for t in range(3)]
    assert torch.equal(together, torch.cat(alone))


def _float32_tasks(tiny_split, tasks: int):
    init = random_init(_builder, seed=2)
    batch = EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(5, 2, 3), seed=0).batch(range(tasks), torch.float32)
    return init.template, init.for_tasks(range(tasks), torch.device("cpu"), torch.float32), batch


def test_threaded_adaptation_is_the_one_thread_reference_bit_for_bit(tiny_split, monkeypatch):
    """Tasks side by side in threads (the CPU's meta-test with more than one torch thread): each task
    runs at one torch thread in a worker, concurrently (a barrier the first tasks must all reach
    together), and the logits equal the reference's at one thread exactly, in float32; torch's thread
    count is restored after."""
    import threading

    from fastfree.metatest import adapt

    template, params, batch = _float32_tasks(tiny_split, 5)
    threads = torch.get_num_threads()
    with torch_threads(1):
        ref = adapted_query_logits_reference(template, params, batch, steps=3, lr=0.05)
    workers, seen, lock = 3, [], threading.Lock()
    together = threading.Barrier(workers, timeout=30)  # sequential tasks would never meet here
    real = adapt.adapted_copy

    def watched(*a, **kw):
        with lock:
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            first = len(seen) <= workers
        if first:
            together.wait()
        return real(*a, **kw)

    monkeypatch.setattr(adapt, "adapted_copy", watched)
    got = adapted_query_logits_threaded(template, params, batch, steps=3, lr=0.05, workers=workers)
    assert torch.equal(got, ref)
    assert len(seen) == 5 and all(n == 1 for _, n in seen)
    assert len({name for name, _ in seen}) == workers and all(name.startswith("fastfree-metatest") for name, _ in seen)
    assert torch.get_num_threads() == threads


def test_threaded_adaptation_stops_on_an_error_and_restores_threads(tiny_split, monkeypatch):
    """A task that fails (or a Ctrl-C) ends the meta-test: its error is raised, the tasks not yet
    started never start, and torch's thread count is what it was."""
    from fastfree.metatest import adapt

    import time

    template, params, batch = _float32_tasks(tiny_split, 8)
    threads, calls = torch.get_num_threads(), []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("task failed")
        time.sleep(0.2)  # the others take a while: all 8 would run by the time they are waited for
        return real(*a, **kw)

    real = adapt.adapted_copy

    monkeypatch.setattr(adapt, "adapted_copy", failing)
    with pytest.raises(RuntimeError, match="task failed"):
        adapted_query_logits_threaded(template, params, batch, steps=1, lr=0.05, workers=2)
    assert torch.get_num_threads() == threads
    assert len(calls) < 8


def test_random_init_differs_per_task_and_is_reproducible():
    init = random_init(_builder, seed=3)
    p = init.for_tasks(range(3), torch.device("cpu"), torch.float32)
    w = p["features.0.weight"]
    assert not torch.equal(w[0], w[1])
    torch.testing.assert_close(init.for_tasks([1], torch.device("cpu"), torch.float32)["features.0.weight"][0], w[1])


def test_average_and_best_model_initialisations():
    torch.manual_seed(0)
    teachers = [Conv4() for _ in range(3)]
    avg = average_init(teachers)
    expected = torch.stack([t.features[0].weight for t in teachers]).mean(0)
    torch.testing.assert_close(avg.shared["features.0.weight"], expected)
    best = best_model_init(teachers, [0.3, 0.9, 0.5])
    torch.testing.assert_close(best.shared["classifier.weight"], teachers[1].classifier.weight)
    # batch statistics only: the template keeps no running statistics
    assert all(m.running_mean is None for m in avg.template.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(FastFreeError, match="one architecture"):
        average_init([Conv4(), Conv4(width=16)])
    with pytest.raises(FastFreeError, match="at least one teacher"):
        average_init([])


def test_accuracy_and_interval():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [3.0, 1.0]]])
    labels = torch.tensor([[0, 1], [0, 1]])
    assert query_accuracy(logits, labels).tolist() == [1.0, 0.5]
    acc = np.array([40.0, 60.0, 50.0, 50.0])
    mean, ci = confidence_interval(acc)
    assert mean == 50.0 and ci == pytest.approx(1.96 * np.std(acc) / 2)


def test_head_size_must_match_ways(tiny_split):
    init = random_init(lambda: build_model("conv4", 4, 8, 32), seed=0)
    with pytest.raises(FastFreeError, match="4 outputs but the meta-test is 5-way"):
        run_metatest(init, tiny_split, CIFAR100_NORM, MetaTestConfig(tasks=1))


def test_bad_metatest_config():
    with pytest.raises(FastFreeError, match="tasks >= 1"):
        MetaTestConfig(tasks=0)
    with pytest.raises(FastFreeError, match="shots"):
        MetaTestConfig(shots=())
    with pytest.raises(FastFreeError, match="unknown meta-test engine"):
        MetaTestConfig(engine="turbo")
