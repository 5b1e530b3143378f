"""fastfree.threads: tasks side by side at one intra-op thread, in order, threads restored."""

import threading
import time

import pytest
import torch

from fastfree.threads import map_single_threaded, one_intra_op_thread, torch_threads


def test_results_in_task_order_at_one_torch_thread_and_threads_restored():
    threads, seen = torch.get_num_threads(), []

    def task(i):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        time.sleep(0.01 * (5 - i))  # later tasks finish first: the order must still be the tasks'
        return i * i

    assert map_single_threaded(task, 5, workers=3, name="probe") == [0, 1, 4, 9, 16]
    assert all(name.startswith("probe") and n == 1 for name, n in seen)
    assert torch.get_num_threads() == threads


def test_one_worker_or_one_task_runs_in_the_callers_thread_at_one_torch_thread():
    here = threading.current_thread().name
    with torch_threads(2):  # as on the 2-core CPU, whatever pytest-xdist left this worker
        for workers, n in ((1, 3), (4, 1)):
            seen = []
            map_single_threaded(lambda i: seen.append((threading.current_thread().name, torch.get_num_threads())),
                                n, workers)
            assert seen == [(here, 1)] * n  # the arithmetic of a task among others
            assert torch.get_num_threads() == 2


def test_an_error_stops_the_tasks_not_started_and_restores_threads():
    threads, calls = torch.get_num_threads(), []

    def task(i):
        calls.append(i)
        if i == 0:
            raise RuntimeError("task failed")
        time.sleep(0.2)

    with pytest.raises(RuntimeError, match="task failed"):
        map_single_threaded(task, 8, workers=2)
    assert torch.get_num_threads() == threads
    assert len(calls) < 8


def test_work_stays_in_the_callers_thread_where_torch_binds_it_there():
    """A dispatch mode (FlopCounterMode: how `fastfree profile run` counts FLOPs) sees only its own
    thread's operators, and a torch.func transform applies only in its own thread: tasks in other
    threads would go uncounted, or untransformed, without a word."""
    from torch.func import vmap
    from torch.utils.flop_counter import FlopCounterMode

    here, x = threading.current_thread().name, torch.ones(4, 4)
    names = []

    def task(i):
        names.append(threading.current_thread().name)
        return x @ x

    with FlopCounterMode(display=False) as counter:
        map_single_threaded(task, 3, workers=3)
    assert names == [here] * 3 and counter.get_total_flops() == 3 * 2 * 4 ** 3
    names.clear()
    vmap(lambda row: map_single_threaded(lambda i: task(i) * row.sum(), 2, workers=2)[0])(torch.ones(2, 3))
    assert names == [here] * 2
    names.clear()
    map_single_threaded(task, 3, workers=3)
    assert here not in names  # and otherwise in the workers


def test_tasks_run_in_the_callers_grad_mode():
    modes = {}
    with torch.no_grad():
        map_single_threaded(lambda i: modes.__setitem__(("off", i), torch.is_grad_enabled()), 2, workers=2)
    map_single_threaded(lambda i: modes.__setitem__(("on", i), torch.is_grad_enabled()), 2, workers=2)
    assert modes == {("off", 0): False, ("off", 1): False, ("on", 0): True, ("on", 1): True}


def test_torch_threads_sets_the_count_inside_and_restores_it_after_also_on_an_error():
    before = torch.get_num_threads()
    with torch_threads(before + 1) as former:
        assert torch.get_num_threads() == before + 1 and former == before
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), one_intra_op_thread() as former:
        assert torch.get_num_threads() == 1 and former == before
        raise KeyError("a task failed")
    assert torch.get_num_threads() == before
