"""One fastfree command at a time on a run folder or a pool folder.

Two `fastfree train` on one run (a second terminal, a job resubmitted while the first still runs)
would both append to metrics.jsonl and replace each other's checkpoints, and the run would hold
neither's iterations; two pretrainings into one pool would mix their teachers. The first command
takes FOLDER/.fastfree.lock with filelock (an OS lock: released when its process ends, however it
ends, so a killed run leaves no stale lock; the file is hidden, which the folder checks ignore) and
writes who it is beside it; a second is refused, naming the first. Locks are held until the command
returns (`held_until_done`, around every command in cli.main).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from fastfree.errors import FastFreeError

LOCK = ".fastfree.lock"
OWNER = ".fastfree.lock.owner"  # not the lock file itself: a second taker truncates that as it opens it

_held: dict[Path, FileLock] = {}
_command = "fastfree"  # the command holding them, for the owner record (set by held_until_done)
_argv: list[str] | None = None  # its command line as typed, likewise


def _owner(folder: Path) -> str:
    who = last_holder(folder) or {}
    try:
        return f"`{who['command']}` (pid {who['pid']} on {who['host']}, since {who['since']})"
    except KeyError:
        return "another fastfree command"


def hold(folder: str | os.PathLike) -> None:
    """Lock `folder` (which must exist) for this command, or refuse, naming who holds it. Holding it
    again is a no-op. A file system without locks (some network mounts) is said and let through."""
    folder = Path(folder).resolve()
    if folder in _held:
        return
    lock = FileLock(folder / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FastFreeError(f"{folder} is in use by {_owner(folder)}: two commands at once would replace each other's "
                            "checkpoints and interleave the folder's records. Wait for it to end, or stop it (Ctrl-C, "
                            "or `kill -TERM PID`: it saves where it is), then run this again") from None
    except (OSError, NotImplementedError) as e:
        print(f"note: cannot lock {folder} ({e}); do not run two fastfree commands on it at once", file=sys.stderr)
        return
    _held[folder] = lock
    since = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    who = {"command": _command, "pid": os.getpid(), "host": socket.gethostname(), "since": since, "argv": _argv,
           "cwd": os.getcwd()}
    try:
        (folder / OWNER).write_text(json.dumps(who))
    except OSError:  # only for the refusal's message
        pass


def last_holder(folder: str | os.PathLike) -> dict | None:
    """The record of the command that holds `folder`, or held it last (kept after it ends): {"command", "pid",
    "host", "since", "argv" (as typed), "cwd"}; None where there is none (or it cannot be read)."""
    try:
        who = json.loads((Path(folder) / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return who if isinstance(who, dict) else None


def holder(folder: str | os.PathLike) -> dict | None:
    """Who holds `folder`'s lock now, for `fastfree status` (which takes no lock: it reads a folder in use):
    the holder's record ({"command", "pid", "host", "since"}; {} where it wrote none) while a command holds
    it, None when none does. Told by trying the lock and letting go at once; a folder whose lock cannot
    be tried (read-only, a file system without locks) gives {"unknown": why}."""
    folder = Path(folder).resolve()
    if folder in _held:  # this process's own
        return {"command": _command, "pid": os.getpid(), "host": socket.gethostname(), "argv": _argv}
    if not (folder / LOCK).exists():  # never held, or a folder from before locks
        return None
    lock = FileLock(folder / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return last_holder(folder) or {}
    except (OSError, NotImplementedError) as e:
        return {"unknown": str(e)}
    lock.release()
    return None


@contextmanager
def held_until_done(command: str, argv: list[str] | None = None) -> Iterator[None]:
    """Release every lock `hold` took inside it, however it ends; `command` ("train") names the holder, and
    `argv` (its command line as typed) tells `fastfree status` what it runs."""
    global _command, _argv
    _command, _argv = f"fastfree {command}", argv
    try:
        yield
    finally:
        while _held:
            _, lock = _held.popitem()
            lock.release()


__all__ = ["LOCK", "OWNER", "held_until_done", "hold", "holder", "last_holder"]
