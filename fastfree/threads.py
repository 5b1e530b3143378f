"""Small independent tasks side by side on a CPU: Python threads, torch at one intra-op thread each.

A few-shot task (a meta-test adaptation, one replay task's MAML) or a small teacher's training
keeps several intra-op threads only partly busy, while torch releases the GIL inside its
operators, so whole tasks in threads overlap where one task's operators could not (measured on a
2-core CPU: the meta-test 1.3-1.55x, a replay meta-batch 1.12-1.26x, the demo's pretraining
1.46-1.79x). Each task's arithmetic is then the single-threaded one, so results equal a one-thread
loop bit for bit whatever the number of workers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


def map_single_threaded(fn: Callable[[int], T], n: int, workers: int | None = None, name: str = "fastfree") -> list[T]:
    """[fn(0), ..., fn(n-1)], run by `workers` Python threads (default: torch's thread count) with torch
    at one intra-op thread while they run. torch's thread count is process-wide: it is restored after,
    also on an error. With one worker (or one task) fn runs in the caller's thread, at one intra-op
    thread too: a task's arithmetic must not depend on how many tasks run beside it (at torch's threads,
    a meta-test chunk of one task rounded otherwise than in a chunk of three, and a Random learner's
    5-shot accuracy moved with --chunk). Where torch's per-thread state binds the work to the caller's
    thread (bound_to_this_thread), fn runs there at torch's threads; grad mode is the caller's in every
    thread.

    An error in a task (or a Ctrl-C) cancels the tasks not started (Executor.map's own cleanup); the
    running ones finish (a fraction of a second for the tasks this is for). `fn` must not share
    mutable state between tasks: torch.func.functional_call swaps a module's parameters in place,
    so each task needs a module of its own."""
    workers = min(workers or torch.get_num_threads(), n)
    if bound_to_this_thread():
        return [fn(i) for i in range(n)]
    if workers <= 1:
        with one_intra_op_thread():
            return [fn(i) for i in range(n)]
    grad_enabled = torch.is_grad_enabled()  # thread-local too: the tasks run as the caller would

    def task(i: int) -> T:
        with torch.set_grad_enabled(grad_enabled):
            return fn(i)

    with one_intra_op_thread(), ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        return list(pool.map(task, range(n)))


def bound_to_this_thread() -> str | None:
    """Why work must stay in the caller's thread, if it must: torch keeps some state per thread, which
    work in other threads would silently lose. A dispatch mode (FlopCounterMode, as `fastfree profile
    run` counts FLOPs; a test's) sees only its own thread's operators; a torch.func transform
    (vmap, grad) applies only in its own thread."""
    if torch._C._len_torch_dispatch_stack():
        return "a dispatch mode is active (e.g. FlopCounterMode)"
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "inside a torch.func transform"
    return None


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """torch at n intra-op threads inside (the count is process-wide), the former count restored after,
    also on an error; yields the former count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def one_intra_op_thread() -> AbstractContextManager[int]:
    """torch at one intra-op thread inside; yields the former count (the number of workers to use)."""
    return torch_threads(1)


__all__ = ["bound_to_this_thread", "map_single_threaded", "one_intra_op_thread", "torch_threads"]
