"""fastfree.threads: tasks side by side at one intra-op thread, in order, threads restored."""

import threading
import time

import pytest
import torch

from fastfree.threads import map_single_threaded


def test_results_in_task_order_at_one_torch_thread_and_threads_restored():
    threads, seen = torch.get_num_threads(), []

    def task(i):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        time.sleep(0.01 * (5 - i))  # later tasks finish first: the order must still be the tasks'
        return i * i

    assert map_single_threaded(task, 5, workers=3, name="probe") == [0, 1, 4, 9, 16]
    assert all(name.startswith("probe") and n == 1 for name, n in seen)
    assert torch.get_num_threads() == threads


def test_one_worker_or_one_task_runs_in_the_callers_thread_at_torchs_threads():
    threads, here = torch.get_num_threads(), threading.current_thread().name
    for workers, n in ((1, 3), (4, 1)):
        seen = []
        map_single_threaded(lambda i: seen.append((threading.current_thread().name, torch.get_num_threads())), n,
                            workers)
        assert seen == [(here, threads)] * n


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
