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


def test_holder_tells_who_holds_a_folder_without_taking_it(tmp_path, holder):
    """`fastfree status` asks, beside the command that holds the folder, and must not disturb it."""
    from fastfree.folder_lock import holder as who_holds

    assert who_holds(tmp_path) is None  # never locked
    p = holder(tmp_path)
    who = who_holds(tmp_path)
    assert who["pid"] == p.pid and who["command"] == "fastfree train"
    with held_until_done("pretrain"), pytest.raises(FastFreeError, match="in use by"):
        hold(tmp_path)  # asking let go of nothing: the holder still holds it
    p.stdin.close()
    p.wait()
    assert who_holds(tmp_path) is None
    with held_until_done("train", ["train", "--preset", "demo"]):
        hold(tmp_path)
        assert who_holds(tmp_path)["argv"] == ["train", "--preset", "demo"]  # this process's own
