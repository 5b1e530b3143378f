"""A long loop stops at its next checkpoint on the first SIGINT (Ctrl-C) or SIGTERM, not mid-way.

Why: a run checkpoints every `checkpoint_every` iterations (10 in the paper's protocol, about five
minutes on a 2-core CPU), so a plain kill loses up to that much work; a batch scheduler preempts a
job with SIGTERM and waits a grace period before SIGKILL. While `stop_on_signals` is active, the
first of those signals only asks the loop to stop: it finishes the iteration it is in, writes a
checkpoint there and raises `StoppedBySignal` (the CLI then says how to resume and exits 128 +
the signal's number, as a shell reports a process killed by it). A second signal stops at once,
as it would have without this: Ctrl-C raises KeyboardInterrupt, SIGTERM terminates (the last
checkpoint is kept either way). Pretraining (`pretrain`, and `train`'s own pool) stops the same
way: no teacher starts, and those under way (or the batched group, a whole pool on a GPU) stop
at the end of their epoch with their state saved (fastfree/pool/group_state.py).

Signal handlers belong to the main thread: elsewhere (a library caller's worker thread) the
context changes nothing and the request is never set. A signal the process ignores stays ignored.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """What the loop checks at each iteration's end: the signal that asked it to stop, if one did."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


class StoppedBySignal(Exception):
    """A loop stopped at a checkpoint because a signal asked it to (not an error: nothing is lost)."""

    def __init__(self, signum: int, completed: int, total: int, kept: str | None = None,
                 then: str = "run the same command with --resume to continue"):
        """kept: what was done and kept (default: `completed` of `total` iterations, checkpointed);
        then: how to continue, which the CLI prints after it."""
        self.signum, self.completed, self.total, self.then = signum, completed, total, then
        kept = kept or f"after iteration {completed} of {total}, with a checkpoint there"
        super().__init__(f"stopped by {signal.Signals(signum).name} {kept}")

    @property
    def exit_code(self) -> int:
        """A shell's code for a process ended by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


@contextmanager
def stop_on_signals(stopping_after: str = "the current iteration, with a checkpoint there") -> Iterator[StopRequest]:
    """Inside, the first SIGINT or SIGTERM sets the yielded request (and says on stderr that the loop
    is `stopping_after` what); a second one stops at once through the handler that was there before.
    The former handlers are restored on leaving, also on an error."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    # a signal the process ignores stays ignored (a non-interactive shell starts `cmd &` with SIGINT ignored)
    previous = {s: h for s in SIGNALS if (h := signal.getsignal(s)) is not signal.SIG_IGN}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)  # None: a handler set outside Python

    def handler(signum, frame):
        if request.requested:  # the second: as if this context were not here
            restore()
            signal.raise_signal(signum)  # default SIGINT: KeyboardInterrupt; default SIGTERM: terminated
            return
        request.signum = signum
        # os.write, not print: a handler may run while the main thread is inside print (reentrant I/O)
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        os.write(2, (f"\nfastfree: {signal.Signals(signum).name}: stopping after {stopping_after} "
                     f"({again} again stops at once, keeping what is saved)\n").encode())

    for s in previous:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        restore()


__all__ = ["StopRequest", "StoppedBySignal", "stop_on_signals"]
