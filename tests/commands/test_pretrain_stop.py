"""`fastfree pretrain` stopped by SIGTERM (or Ctrl-C's SIGINT, the same path): the teachers under way
finish and are saved, the command says how to continue and exits 143, and `--resume` trains only the
rest. Run as a real process, since it is about signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fastfree.cli import main
from fastfree.pool.progress import PROGRESS
from tests.test_cli import SMALL

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

TEACHERS = 8


def _saved(pool) -> int:
    return len(list((pool / PROGRESS).glob("teacher*.safetensors")))


def test_a_signal_stops_pretraining_after_the_teachers_under_way_and_resume_trains_the_rest(tmp_path):
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
    assert "fastfree: SIGTERM: stopping after the teachers under way, each saved as it finishes" in err
    assert f"fastfree pretrain: stopped by SIGTERM with {kept} of {TEACHERS} teachers trained, each saved: run the " \
           "same command with --resume to continue" in err
    out = tmp_path / "p.json"
    assert main([*flags, "--resume", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["resumed_teachers"] == kept and result["teachers"] == TEACHERS
    assert (pool / "manifest.json").is_file() and not (pool / PROGRESS).exists()
