"""`fastfree profile run` end to end on the demo preset (tiny: b=1, k=1, one timed iteration)."""

from __future__ import annotations

import json

import pytest

from fastfree.cli import main
from fastfree.profiling.workload import PHASES

TINY = ["--preset", "demo", "--device", "cpu", "--iterations", "1", "--metatest-tasks", "2",
        "--teachers-per-iteration", "1", "--k", "1", "--images-per-class", "20"]


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "p.json"
    assert main(["profile", "run", *TINY, "--peak-tflops", "2.0", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_phase_has_time_flops_and_rate(profile):
    phases = profile["phases"]
    assert list(phases) == list(PHASES)
    for name in ("five", "alignment", "bell", "replay"):
        assert phases[name]["flops"] > 0 and phases[name]["seconds_median"] > 0, name
        p = phases[name]
        assert p["tflop_per_s"] == pytest.approx(p["flops"] / p["seconds_median"] / 1e12)
        assert p["mfu"] == pytest.approx(p["tflop_per_s"] / 2.0)
    assert phases["bank"]["flops"] == 0  # copies only
    assert profile["iteration"]["flops"] == pytest.approx(sum(p["flops"] for p in phases.values()))
    assert profile["metatest"]["flops_per_task"] > 0 and profile["metatest"]["seconds_per_task"] > 0


def test_replay_flops_scale_with_the_meta_batches_run(profile):
    assert profile["replay_meta_batches_counted"] >= 1 and profile["replay_meta_batches"][0] >= 1


def test_cpu_run_records_device_precision_memory_and_no_telemetry(profile):
    assert profile["device"] == "cpu" and profile["precision"] == "fp32" and profile["peak_tflops"] == 2.0
    assert profile["peak_source"] == "--peak-tflops" and profile["replay_graph_fallback"] is None
    assert profile["telemetry"] == {"available": False, "reason": "no NVML telemetry on a cpu device"}
    assert profile["memory"]["host_peak_rss_mib"] > 0
    e = profile["extrapolation"]
    assert e["iterations"] == 60 and e["data_recovery_hours"] > 0 and e["training_hours"] > e["data_recovery_hours"]


def test_without_a_known_peak_mfu_is_absent_and_says_why(profile, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "run", *TINY, "--engine", "reference", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["peak_tflops"] is None and "pass --peak-tflops" in r["peak_source"]
    assert all(p["mfu"] is None for p in r["phases"].values()) and r["engine"] == "reference"
    assert "| five |" in capsys.readouterr().out
    # both engines count the model's FLOPs (the fast engine's fused upsampling executes fewer in FIVE,
    # which must show as time, not as less work)
    assert {n: p["flops"] for n, p in r["phases"].items()} == {n: p["flops"] for n, p in profile["phases"].items()}


def test_bad_peak_is_a_clear_error(capsys):
    assert main(["profile", "run", *TINY, "--peak-tflops", "0"]) == 2
    assert "--peak-tflops must be positive" in capsys.readouterr().err
