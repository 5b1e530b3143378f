"""`fastfree pretrain` stopped by SIGTERM (or Ctrl-C's SIGINT, the same path): the teachers under way
stop at their epoch's end with their state saved, the command says how to continue and exits 143, and
`--resume` continues them and trains the rest. Run as a real process, since it is about signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file

from fastfree.cli import main
from fastfree.commands import pretrain as command
from fastfree.graceful_stop import StopRequest
from fastfree.pool.progress import PAUSED, PROGRESS
from fastfree.pool.store import WEIGHTS
from tests.test_cli import SMALL

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

TEACHERS = 8


def _saved(pool) -> int:
    return len(list((pool / PROGRESS).glob("teacher*.safetensors")))


def test_a_signal_stops_pretraining_at_the_epochs_end_and_resume_continues(tmp_path, capsys):
    pool = tmp_path / "pool"
    flags = ["pretrain", "--teachers", str(TEACHERS), "--epochs", "20", "--batch-size", "32", "--out", str(pool),
             "--device", "cpu", *SMALL]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastfree", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while _saved(pool) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    kept = _saved(pool)
    assert 1 <= kept < TEACHERS and not (pool / "manifest.json").exists()
    paused = len(list((pool / PROGRESS).glob(PAUSED.format("*"))))
    assert "fastfree: SIGTERM: stopping after the epoch under way, with the teachers' state saved there" in err
    # those under way pause (one could be in its last epoch, and finish instead)
    said = re.search(rf"fastfree pretrain: stopped by SIGTERM with {kept} of {TEACHERS} teachers trained, each saved"
                     r"(, and the (\d) under way saved after epochs? [\d, and]+ of 20)?: run the same command with "
                     r"--resume to continue", err)
    assert said is not None, err
    assert paused == int(said.group(2) or 0) and paused + kept < TEACHERS
    out = tmp_path / "p.json"
    capsys.readouterr()
    assert main([*flags, "--resume", "--json", str(out)]) == 0
    assert f"resuming: {kept} of {TEACHERS} teachers already trained" + (f", {paused} more from epoch" if paused else "\n") \
        in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["resumed_teachers"] == kept and result["teachers"] == TEACHERS
    assert (pool / "manifest.json").is_file() and not (pool / PROGRESS).exists()


def test_a_batched_pool_stops_at_an_epochs_end_and_resume_continues_it(tmp_path, monkeypatch, capsys):
    """The batched engine trains the pool as one group: a stop keeps its state at the epoch's end, and
    --resume continues from the next epoch to the pool an uninterrupted run writes. In-process, the
    request set where the first signal's handler would set it (the handlers: tests/test_graceful_stop.py)."""
    flags = ["pretrain", "--teachers", "4", "--epochs", "3", "--batch-size", "32", "--engine", "batched",
             "--device", "cpu", *SMALL]
    assert main([*flags, "--out", str(tmp_path / "whole")]) == 0
    request, real = None, command.pretrain_pool

    @contextmanager
    def signals(stopping_after):
        nonlocal request
        assert stopping_after == "the epoch under way, with the teachers' state saved there"
        request = StopRequest()
        yield request

    def asked(split, normalization, specs, cfg, engine, dtype, bar, **kwargs):
        def step(k):
            bar(k)
            request.signum = signal.SIGTERM  # in the first epoch
        return real(split, normalization, specs, cfg, engine, dtype, step, **kwargs)

    monkeypatch.setattr(command, "stop_on_signals", signals)
    monkeypatch.setattr(command, "pretrain_pool", asked)
    pool = tmp_path / "cut"
    capsys.readouterr()
    assert main([*flags, "--out", str(pool)]) == 143
    assert "fastfree pretrain: stopped by SIGTERM with 0 of 4 teachers trained, and the 4 under way saved after " \
           "epoch 1 of 3: run the same command with --resume to continue" in capsys.readouterr().err
    assert (pool / PROGRESS / PAUSED.format("0000")).is_file() and _saved(pool) == 0
    handed = []  # a group trained again from its start would give the same pool: check that the state is used

    def recorded(*args, paused, **kwargs):
        handed.append(paused)
        return real(*args, paused=paused, **kwargs)

    bars, real_bar = [], command.progress_bar

    def counted(**kwargs):
        bars.append(real_bar(**kwargs))
        return bars[-1]

    monkeypatch.setattr(command, "pretrain_pool", recorded)
    monkeypatch.setattr(command, "progress_bar", counted)
    assert main([*flags, "--out", str(pool), "--resume"]) == 0
    assert "resuming: 0 of 4 teachers already trained, 4 more from epoch 2 of 3" in capsys.readouterr().out
    assert [[(p.indices, p.epochs_done) for p in states] for states in handed] == [[((0, 1, 2, 3), 1)]]
    # the bar starts at the epoch already trained and ends full
    [bar] = bars
    assert 0 < bar.initial < bar.total and bar.n == bar.total
    a, b = load_file(str(tmp_path / "whole" / WEIGHTS)), load_file(str(pool / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (pool / PROGRESS).exists()

