"""The regression rule of the benchmark tests (see conftest.py), as a pure function."""

from __future__ import annotations

from dataclasses import dataclass

REGRESSION_FACTOR = 2.0


@dataclass(frozen=True)
class Verdict:
    raw: float  # median / baseline median (seconds)
    normalised: float  # the same, each divided by its session's calibration time
    ok: bool


def compare(median_s: float, calibration_s: float, base: dict, factor: float = REGRESSION_FACTOR) -> Verdict:
    """A regression is slower in seconds AND relative to the machine's calibration, by more than `factor`.

    A slower machine is slower in seconds only; a calibration timed in a noisy moment moves the
    ratio only; a slower hot path moves both.
    """
    raw = median_s / base["median_s"]
    normalised = (median_s / calibration_s) / base["normalised"]
    return Verdict(raw, normalised, min(raw, normalised) <= factor)
