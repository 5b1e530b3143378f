"""fastfree.graceful_stop: the first SIGINT/SIGTERM asks a loop to stop, a second stops at once.

Each case runs in a fresh Python process (no torch: about 50 ms each): a signal handler that was
not installed would otherwise end the test session itself.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def run(body: str) -> subprocess.CompletedProcess:
    # Each case starts as from a terminal, with Python's own Ctrl-C handler: a suite launched in the background
    # by a non-interactive shell (`pytest &`, `nohup`) hands its children SIGINT ignored, which Python keeps.
    code = ("import os, signal, threading\nfrom fastfree.graceful_stop import stop_on_signals\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n" + textwrap.dedent(body))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_the_first_signal_only_asks_and_the_handlers_are_restored_after(sig):
    r = run(f"""
        before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
        with stop_on_signals("the test's step") as stop:
            assert not stop.requested
            signal.raise_signal(signal.{sig})
            print("still running", stop.requested, signal.Signals(stop.signum).name)
        assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before
        print("restored")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == [f"still running True {sig}", "restored"]
    assert f"fastfree: {sig}: stopping after the test's step ({'Ctrl-C' if sig == 'SIGINT' else sig} again stops " \
           "at once, keeping what is saved)" in r.stderr


def test_a_second_ctrl_c_stops_at_once():
    r = run("""
        with stop_on_signals() as stop:
            signal.raise_signal(signal.SIGINT)
            try:
                signal.raise_signal(signal.SIGINT)
                print("not stopped")
            except KeyboardInterrupt:
                print("KeyboardInterrupt")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "KeyboardInterrupt"


def test_a_second_sigterm_terminates_as_without_it():
    r = run("""
        with stop_on_signals():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            print("not terminated")
    """)
    assert r.returncode == -signal.SIGTERM and "not terminated" not in r.stdout


def test_an_earlier_handler_is_what_the_second_signal_reaches():
    """An application's own SIGTERM handler (e.g. a scheduler's wrapper) gets the second signal."""
    r = run("""
        signal.signal(signal.SIGTERM, lambda s, f: print("the application's handler"))
        with stop_on_signals():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
        print("after")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["the", "application's", "handler", "after"]


def test_outside_the_main_thread_nothing_is_installed():
    r = run("""
        seen = []
        def worker():
            with stop_on_signals() as stop:
                seen.append((signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, stop.requested))
        t = threading.Thread(target=worker)
        t.start(); t.join()
        print(seen)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[(True, False)]"


def test_stopped_by_signal_exits_as_a_shell_reports_the_signal():
    from fastfree.graceful_stop import StoppedBySignal

    e = StoppedBySignal(signal.SIGTERM, 7, 60)
    assert e.exit_code == 143 and str(e) == "stopped by SIGTERM after iteration 7 of 60, with a checkpoint there"
    assert e.then == "run the same command with --resume to continue"
    e = StoppedBySignal(signal.SIGINT, 1, 2, "with 1 of 2 teachers trained", "run it again")
    assert e.exit_code == 130 and str(e) == "stopped by SIGINT with 1 of 2 teachers trained" and e.then == "run it again"


def test_an_ignored_signal_stays_ignored():
    """A job a non-interactive shell starts in the background (`cmd &`) ignores SIGINT: Ctrl-C does not stop it."""
    r = run("""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with stop_on_signals() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
            print(signal.Signals(stop.signum).name)
        print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["SIGTERM", "True"]
