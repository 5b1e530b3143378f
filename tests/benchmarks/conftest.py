"""Benchmark regression tests: pytest-benchmark timings compared with a committed baseline.

Shared CI machines are noisy and differ from the machine that recorded the baseline. Each
median is compared with the baseline twice: in seconds, and divided by a calibration workload
(a fixed convolution forward + backward) timed in the same session. A test fails only when
both are more than `REGRESSION_FACTOR` times the baseline's: a slower machine shows in
seconds only, a calibration taken in a noisy moment in the ratio only, a regression in both. The benchmarks run on one thread (the CPU torch
default varies with the machine).

Update the baseline after an intended change:  python -m fastfree.profiling.update_benchmark_baseline
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import pytest
import torch

from fastfree.threads import torch_threads
from tests.benchmarks.regression import REGRESSION_FACTOR, compare

BASELINE = Path(__file__).with_name("baseline.json")
UPDATE_ENV = "FASTFREE_UPDATE_BENCHMARK_BASELINE"


def _calibration_seconds() -> float:
    """Median seconds of a fixed conv forward + backward (16 x 3 x 32 x 32 -> 32 filters, x4)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    w = torch.randn(32, 3, 3, 3, generator=g, requires_grad=True)

    def work():
        for _ in range(4):
            torch.nn.functional.conv2d(x, w, padding=1).square().sum().backward()

    work()
    runs = []
    for _ in range(31):
        t0 = time.perf_counter()
        work()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


@pytest.fixture
def one_thread():
    with torch_threads(1):  # the rest of the suite keeps its threads
        yield


@pytest.fixture(scope="session")
def calibration() -> float:
    with torch_threads(1):
        return _calibration_seconds()


_RECORDED: dict[str, dict] = {}


@pytest.fixture
def regression(benchmark, calibration, one_thread, request):
    """Call `regression(fn, rounds=5)`: benchmark fn, then compare with the baseline."""

    def run(fn, rounds: int = 5, warmup_rounds: int = 1):
        if os.environ.get("PYTEST_XDIST_WORKER"):
            # pytest-benchmark times nothing under pytest-xdist (workers share the cores), so there
            # would be nothing to compare: skipped, and the README's test command runs them alone.
            pytest.skip(f"timed benchmarks run alone, not under pytest-xdist: "
                        f"pytest {request.node.nodeid.split('::')[0]} (the README's test command does)")
        result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        name = request.node.name
        if benchmark.stats is None:  # --benchmark-disable: ran once, nothing to compare
            return result
        median = benchmark.stats.stats.median
        benchmark.extra_info["calibration_s"] = calibration
        benchmark.extra_info["normalised_median"] = median / calibration
        _RECORDED[name] = {"median_s": median, "normalised": median / calibration}
        if os.environ.get(UPDATE_ENV):
            return result
        baseline = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {"benchmarks": {}}
        base = baseline["benchmarks"].get(name)
        if base is None:
            pytest.fail(f"{name} has no entry in {BASELINE}: record it with "
                        "`python -m fastfree.profiling.update_benchmark_baseline`")
        verdict = compare(median, calibration, base)
        assert verdict.ok, (
            f"{name}: {1e3 * median:.1f} ms median is {verdict.raw:.2f}x the committed baseline "
            f"({1e3 * base['median_s']:.1f} ms on {baseline.get('machine')}) and {verdict.normalised:.2f}x it "
            f"relative to this machine's calibration workload; more than {REGRESSION_FACTOR}x on both is a "
            "regression. If the slowdown is intended, update the baseline with "
            "`python -m fastfree.profiling.update_benchmark_baseline`")
        return result

    return run


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get(UPDATE_ENV) and _RECORDED:
        BASELINE.write_text(json.dumps({
            "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores), one thread",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "regression_factor": REGRESSION_FACTOR,
            "note": "median_s: seconds; normalised: median / the session's calibration (tests/benchmarks/conftest.py)",
            "benchmarks": dict(sorted(_RECORDED.items())),
        }, indent=2) + "\n")
