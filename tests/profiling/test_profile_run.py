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
    for bad in ("0", "nan", "inf"):  # refused as the flag is read
        with pytest.raises(SystemExit):
            main(["profile", "run", *TINY, "--peak-tflops", bad])
        assert f"--peak-tflops: must be a finite number > 0, got {bad}" in capsys.readouterr().err


def test_amp_phases_are_rated_in_bf16_and_the_rest_in_their_own_precision(tmp_path):
    """--amp autocasts FIVE and BELL only: replay, alignment and the meta-test keep fp32 (TF32 on CUDA)
    and are rated against that precision's peak; the iteration's MFU weighs each phase by its own."""
    out = tmp_path / "a.json"
    assert main(["profile", "run", *TINY, "--amp", "--peak-tflops", "2.0", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {n: p["precision"] for n, p in r["phases"].items()} == {
        "five": "bf16", "generator": "fp32", "bank": "fp32", "alignment": "fp32", "bell": "bf16", "replay": "fp32"}
    assert r["metatest"]["precision"] == "fp32" and r["unautocast_precision"] == "fp32"
    it = r["iteration"]  # one --peak-tflops for every precision: the weighted MFU is the plain ratio
    assert it["mfu"] == pytest.approx(it["flops"] / it["seconds_median"] / 1e12 / 2.0)


def test_timed_iterations_that_compiled_or_captured_are_left_out(tmp_path, monkeypatch):
    """A mixed pool's FIVE meets a new (architecture, teacher count) variant after the warm-up: that
    iteration's one-time cost stays out of the medians, and the report says which it was."""
    from fastfree.profiling import profile_run

    real, calls = profile_run._iteration, []

    def second_timed_sets_up(*args, **kwargs):
        m = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # 1: FLOP count, 2: warm-up, 3-5: timed
            m["five_setup"] = True
        return m

    monkeypatch.setattr(profile_run, "_iteration", second_timed_sets_up)
    out = tmp_path / "s.json"
    argv = [a if a != "1" or i != TINY.index("--iterations") + 1 else "3" for i, a in enumerate(TINY)]
    assert main(["profile", "run", *argv, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["iterations_timed"] == 3 and r["timed_iterations_with_setup"] == [1] and r["iterations_in_medians"] == 2
    assert len(r["phases"]["five"]["seconds"]) == 2


def test_the_protocols_meta_val_count_is_the_runs():
    from fastfree.free.config import FreeConfig
    from fastfree.free.run import is_evaluation

    # the cifar-fs protocol: 1000 iterations, 19 warm-up, every 20: 50 evaluations, the last among them
    cfg = FreeConfig(iterations=1000, warmup=19, eval_every=20)
    assert sum(is_evaluation(i, cfg) for i in range(1, 1001)) == 50
    # every 30: 30, 60, ..., 990 and the last (1000): 34 (iterations // eval_every said 33)
    cfg = FreeConfig(iterations=1000, warmup=19, eval_every=30)
    assert sum(is_evaluation(i, cfg) for i in range(1, 1001)) == 34
