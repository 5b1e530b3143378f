"""The benchmark regression rule fails on a real slowdown and tolerates a slower machine or a noisy calibration."""

from tests.benchmarks.regression import compare

BASE = {"median_s": 0.010, "normalised": 2.0}  # recorded with a 5 ms calibration


def test_a_three_times_slower_hot_path_fails():
    assert not compare(0.030, 0.005, BASE).ok


def test_a_three_times_slower_machine_passes():
    v = compare(0.030, 0.015, BASE)
    assert v.ok and v.raw == 3.0 and abs(v.normalised - 1.0) < 1e-12


def test_a_calibration_timed_in_a_noisy_moment_passes():
    assert compare(0.012, 0.002, BASE).ok  # normalised 3x, seconds 1.2x


def test_within_the_factor_passes():
    assert compare(0.019, 0.005, BASE).ok
