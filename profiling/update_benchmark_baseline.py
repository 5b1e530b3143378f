"""Re-record tests/benchmarks/baseline.json (after an intended change of speed), from the repository root:

    python -m fastfree.profiling.update_benchmark_baseline

Runs the benchmark regression tests with FASTFREE_UPDATE_BENCHMARK_BASELINE=1: they time as
usual, skip the comparison, and the session writes every median (raw and divided by the
session's calibration workload) into the baseline. Record it on a quiet machine: a baseline
taken under load makes the 2x regression check lax.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    if not Path("tests/benchmarks/conftest.py").is_file():
        print("run this from the repository root (tests/benchmarks/ not found here)", file=sys.stderr)
        return 2
    env = dict(os.environ, FASTFREE_UPDATE_BENCHMARK_BASELINE="1")
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/benchmarks/test_hot_paths.py",
                          "-p", "no:cacheprovider"], env=env)
    if rc == 0:
        print("wrote tests/benchmarks/baseline.json")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
