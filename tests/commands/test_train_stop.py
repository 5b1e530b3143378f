"""`fastfree train` stopped by Ctrl-C (SIGINT) or SIGTERM: the iteration under way ends with a
checkpoint, the command says how to continue and exits 130 / 143, and `--resume` continues from there
(fastfree/graceful_stop.py). Run as a real process, since it is about signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastfree.cli import main
from fastfree.free.run import CHECKPOINT, METRICS
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _flags(pool, run_dir, iterations):
    flags = [*TRAIN, *SMALL]
    flags[flags.index("--iterations") + 1] = str(iterations)
    return ["--pool", str(pool), "--run-dir", str(run_dir), *flags]


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_a_signal_stops_the_run_at_a_checkpoint_and_the_command_resumes_it(run, tmp_path):
    """SIGTERM, a scheduler's; Ctrl-C's SIGINT takes the same path (tests/test_graceful_stop.py)."""
    sig = signal.SIGTERM
    pool, run_dir = run[0].parent / "pool", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "fastfree", "train", *_flags(pool, run_dir, 500)]  # far more than it will run
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while _lines(run_dir / METRICS) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    done = torch.load(run_dir / CHECKPOINT, weights_only=True)["iteration"]
    assert done == _lines(run_dir / METRICS) >= 2  # the iteration it was in, finished and checkpointed
    name = signal.Signals(sig).name
    assert f"fastfree: {name}: stopping after the current FREE iteration" in err
    assert f"stopped by {name} after iteration {done} of 500, with a checkpoint there: run the same command " \
           f"with --resume to continue" in err
    assert not (run_dir / "results.json").exists()  # no meta-test of a run stopped half-way
    # continued (and here ended one iteration later) by the command, from where it stopped
    out = tmp_path / "r.json"
    assert main(["train", *_flags(pool, run_dir, done + 1), "--resume", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["started_at_iteration"] == done
    assert [json.loads(x)["iteration"] for x in (run_dir / METRICS).read_text().splitlines()] == list(range(done + 1))
