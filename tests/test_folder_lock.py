"""fastfree/folder_lock.py: a second command on a run or pool folder in use is refused, naming the first;
the lock goes with its process however it ends (no stale lock after a kill)."""

import signal

import pytest

from fastfree.errors import FastFreeError
from fastfree.folder_lock import LOCK, held_until_done, hold


def test_a_folder_in_use_is_refused_naming_who_holds_it_and_free_once_it_ends(tmp_path, holder):
    p = holder(tmp_path)
    with held_until_done("pretrain"):
        with pytest.raises(FastFreeError, match=rf"in use by `fastfree train` \(pid {p.pid} on .*Wait for it to end"):
            hold(tmp_path)
    p.stdin.close()  # the holder's command returns
    p.wait()
    with held_until_done("pretrain"):
        hold(tmp_path)
        hold(tmp_path)  # again in the same command: a no-op
    with held_until_done("pretrain"):  # released when the command returned
        hold(tmp_path)
    assert (tmp_path / LOCK).exists()  # hidden; the folder checks ignore it


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    p = holder(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with held_until_done("train"):
        hold(tmp_path)
