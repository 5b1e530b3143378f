"""`fastfree profile run` end to end on the demo preset (tiny: b=1, k=1, one timed iteration)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from fastfree.cli import main
from fastfree.profiling.workload import PHASES

TINY = ["--preset", "demo", "--device", "cpu", "--iterations", "1", "--metatest-tasks", "2",
        "--teachers-per-iteration", "1", "--k", "1", "--images-per-class", "20"]


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """One profile of the tiny run, with --trace (its own run was 33-38 s of this module's ~110): the
    trace is one more iteration, after everything the JSON measures. torch 2.11 warned on every profile
    unless acc_events was set: that warning is an error here (a module fixture takes no filterwarnings mark)."""
    out = tmp_path_factory.mktemp("profile") / "p.json"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Profiler clears events", category=UserWarning)
        assert main(["profile", "run", *TINY, "--peak-tflops", "2.0", "--json", str(out),
                     "--trace", str(out.parent / "t" / "trace.json")]) == 0
    return json.loads(out.read_text())


def test_trace_writes_one_iterations_chrome_trace_without_a_profiler_warning(profile):
    """--trace profiles one more iteration into a Chrome trace, in a folder it makes."""
    events = json.loads(Path(profile["trace"]).read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("aten::convolution") for e in events)


def test_every_phase_has_time_flops_and_rate(profile):
    phases = profile["phases"]
    assert list(phases) == list(PHASES)
    for name in ("five", "alignment", "bell", "replay"):
        assert phases[name]["flops"] > 0 and phases[name]["seconds_median"] > 0, name
        p = phases[name]
        assert p["tflop_per_s"] == pytest.approx(p["flops"] / p["seconds_mean"] / 1e12)
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
    assert it["mfu"] == pytest.approx(it["flops"] / it["seconds_mean"] / 1e12 / 2.0)


def test_timed_iterations_that_compiled_or_captured_are_left_out(tmp_path, monkeypatch):
    """A mixed pool's FIVE meets a new (architecture, teacher count) variant after the warm-up: that
    iteration's one-time cost stays out of the means, and the report says which it was."""
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
    assert r["iterations_timed"] == 3 and r["timed_iterations_with_setup"] == [1] and r["iterations_in_means"] == 2
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


def _stubbed(monkeypatch, teachers, count, timed):
    """profile_run's arithmetic on synthetic iterations: `count(state)` gives a counted iteration's
    (FLOPs per phase, replay meta-batches), `timed(state)` a timed one's (seconds per phase, meta-batches)."""
    import types

    import torch

    from fastfree.config import PRESETS
    from fastfree.profiling import profile_run

    class Timer:
        def __init__(self, device, counter):
            self.f = {}

        def flops(self):
            return self.f

    def iteration(w, state, engine, timer=None):
        if timer is not None:
            timer.f, batches = count(state)
            return {"replay": {"meta_batches": batches}}
        seconds, batches = timed(state)
        return {"phase_s": {n: seconds.get(n, 0.0) for n in PHASES}, "replay": {"meta_batches": batches}}

    monkeypatch.setattr(profile_run, "CountingTimer", Timer)
    monkeypatch.setattr(profile_run, "_iteration", iteration)
    monkeypatch.setattr(profile_run, "fresh_state", lambda w: types.SimpleNamespace(
        rngs={"teachers": torch.Generator().manual_seed(0)}))
    monkeypatch.setattr(profile_run, "make_engine", lambda w, o: None)
    monkeypatch.setattr(profile_run, "_metatest", lambda w, state, tasks: (1.0, 1e9))
    preset = PRESETS["demo"]
    w = types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32, cfg=preset.free, preset=preset, ways=5,
                              teachers=teachers, teachers_source="stub", dataset=types.SimpleNamespace(image_size=32))
    return profile_run.profile_run(w, None, iterations=3, metatest_tasks=1, peak_override=1.0)


def test_rates_divide_the_work_done_by_its_time(monkeypatch):
    """Replay stops on patience: its meta-batches vary by iteration. 1 GFLOP and 0.25 s per meta-batch
    is 4 GFLOP/s whatever the counts; a mean count's FLOPs over the median iteration's time was not
    (6.67 GFLOP/s for [4, 4, 12] meta-batches), nor the protocol's hours median x iterations."""
    import torch

    counts = iter([7, 4, 4, 12])  # the warm-up iteration first

    def timed(state):
        n = next(counts)
        return {"five": 1.0, "replay": 0.25 * n}, n

    r = _stubbed(monkeypatch, [torch.nn.Linear(2, 2)] * 2, lambda state: ({"five": 2e9, "replay": 4e9}, 4), timed)
    rp, it = r["phases"]["replay"], r["iteration"]
    assert r["replay_meta_batches"] == [4, 4, 12] and not r["flops_per_draw"]
    assert rp["flops_per_iteration"] == [4e9, 4e9, 12e9]
    assert rp["tflop_per_s"] * 1e3 == pytest.approx(4.0)
    assert it["seconds_mean"] == pytest.approx(8 / 3) and it["flops"] == pytest.approx(2e9 + 20e9 / 3)
    assert it["tflop_per_s"] * 1e3 == pytest.approx((6e9 + 20e9) / 8 / 1e9)
    after = r["extrapolation"]["iterations"] - r["extrapolation"]["warmup"]
    assert r["extrapolation"]["data_recovery_hours"] == pytest.approx(1.0 * after / 3600)


def test_a_mixed_pool_counts_each_timed_iteration_on_its_own_draw(monkeypatch):
    """In a mixed pool the teachers drawn set FIVE's work (a ResNet-18 costs ~140 Conv4s): one counted
    iteration's FLOPs against other iterations' time misstated the rate. Each timed iteration is counted
    again on its own draw (its RNG state), and the draws here differ."""
    import torch

    cost = {0: 1e9, 1: 100e9}  # FIVE FLOPs of a draw of architecture 0 or 1

    def draw(state):
        return int(torch.randint(0, 2, (1,), generator=state.rngs["teachers"]))

    seen = []

    def timed(state):
        d = draw(state)
        seen.append(d)
        return {"five": 1.0 + 9.0 * d}, 0  # architecture 1 takes 10 s

    r = _stubbed(monkeypatch, [torch.nn.Linear(2, 2), torch.nn.Linear(3, 3)],
                 lambda state: ({"five": cost[draw(state)]}, 0), timed)
    timed_draws = seen[1:]  # after the warm-up
    assert r["flops_per_draw"] and len(set(timed_draws)) == 2
    five = r["phases"]["five"]
    assert five["flops_per_iteration"] == [cost[d] for d in timed_draws]
    want = sum(cost[d] for d in timed_draws) / sum(1.0 + 9.0 * d for d in timed_draws)
    assert five["tflop_per_s"] * 1e12 == pytest.approx(want)


def test_a_pool_of_another_image_size_is_refused(tmp_path, capsys):
    """profile run and bench checked only the pool's data set name: a 32 px pool at --image-size 40 went ahead."""
    pool = tmp_path / "pool"
    assert main(["pretrain", "--teachers", "1", "--epochs", "1", "--batch-size", "64", "--images-per-class", "20",
                 "--out", str(pool), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["profile", "run", *TINY, "--pool", str(pool), "--image-size", "40"]) == 2
    assert "holds teachers of 32 px but this profile's images are 40 px" in capsys.readouterr().err
