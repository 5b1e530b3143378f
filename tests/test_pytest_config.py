"""The project's pytest configuration works with core pytest alone.

The GPU machines' image has no pytest-xdist, and profiling/gpu_check.py runs `pytest -m gpu` there
(with `-n` only when xdist is present). An xdist option in pyproject.toml's addopts (`--dist
worksteal` was put there once) makes every pytest without the plugin a usage error, so the GPU check
would run no test; the README's command passes xdist's options instead.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pytest_runs_without_xdist():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "--collect-only",
                        "-q", "tests/test_errors.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_errors.py::" in r.stdout
