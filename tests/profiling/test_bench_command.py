"""`fastfree bench` end to end on the demo preset (tiny sizes, one repeat): every section reports."""

from __future__ import annotations

import json

from fastfree.cli import main


def test_bench_reports_reference_and_fast_side_by_side(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--preset", "demo", "--device", "cpu", "--repeats", "1", "--k", "1",
                 "--teachers-per-iteration", "1", "--metatest-tasks", "2", "--pool-teachers", "2", "--pool-steps",
                 "1", "--images-per-class", "20", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    names = [s["benchmark"] for s in r["summary"]]
    assert names == ["FIVE epoch", "FREE iteration", "pool pretraining (per teacher-step)",
                     "meta-test 1-shot (per task)", "meta-test 5-shot (per task)"]
    for s in r["summary"]:
        assert s["reference_s"] > 0 and s["fast_s"] > 0 and s["speedup"] == s["reference_s"] / s["fast_s"]
    it = r["sections"]["iteration"]["times"]
    for engine in ("reference", "fast"):
        shares = it[engine]["phase_share"]
        assert abs(sum(shares.values()) - 1) < 1e-9 and shares["five"] > 0
    assert r["device_name"] and r["torch"] and "| FREE iteration |" in capsys.readouterr().out


def test_bench_sections_can_be_chosen(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--device", "cpu", "--only", "pool", "--repeats", "1", "--pool-teachers", "2",
                 "--pool-steps", "1", "--json", str(out)]) == 0
    assert [s["benchmark"] for s in json.loads(out.read_text())["summary"]] == ["pool pretraining (per teacher-step)"]


def test_the_iteration_bench_reports_each_engine_as_it_is_timed(monkeypatch):
    """A run cut off while the fast engine compiles still has the reference's time on disk."""
    from types import SimpleNamespace

    from fastfree.profiling import bench_iteration

    timed = {"reference": {"median_s": 2.0}, "fast": {"median_s": 1.0}}
    monkeypatch.setattr(bench_iteration, "time_engine",
                        lambda w, options, repeats: timed["reference" if options is None else "fast"])
    w = SimpleNamespace(preset=SimpleNamespace(name="demo"), dataset=SimpleNamespace(image_size=32),
                        cfg=SimpleNamespace(teachers_per_iteration=1, five=SimpleNamespace(k=1)),
                        teachers_source="fresh")
    seen = []
    r = bench_iteration.bench(w, SimpleNamespace(), 1, lambda partial: seen.append(sorted(partial["times"])))
    assert seen == [["reference"], ["fast", "reference"]] and r["times"] == timed


def test_the_iteration_fast_engine_alone(tmp_path, capsys):
    """--fast-only: a second variant on a device whose reference an earlier call timed (the GPU check's
    fallbacks), without timing the reference again; no ratio is made up."""
    out = tmp_path / "f.json"
    assert main(["bench", "--preset", "demo", "--device", "cpu", "--only", "iteration", "--fast-only", "--repeats",
                 "1", "--k", "1", "--teachers-per-iteration", "1", "--images-per-class", "20", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["sections"]["iteration"]["times"]) == ["fast"]
    assert r["summary"][0]["reference_s"] is None and r["summary"][0]["speedup"] is None
    assert "| FREE iteration | - |" in capsys.readouterr().out
    assert main(["bench", "--device", "cpu", "--fast-only"]) == 2
    assert "pass --only iteration with it" in capsys.readouterr().err


def test_the_iteration_with_the_sequential_generator(tmp_path, capsys):
    """--generator sequential: Table 5's baseline iteration on both engines (the fast one runs its teachers
    one at a time), named so in the table; it changes the iteration only, so other sections refuse it."""
    out = tmp_path / "s.json"
    assert main(["bench", "--preset", "demo", "--device", "cpu", "--only", "iteration", "--generator", "sequential",
                 "--repeats", "1", "--k", "1", "--teachers-per-iteration", "2", "--images-per-class", "20",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["summary"][0]["benchmark"] == "FREE iteration, sequential generator"
    assert r["sections"]["iteration"]["generator"] == "sequential"
    assert r["summary"][0]["reference_s"] > 0 and r["summary"][0]["fast_s"] > 0
    assert main(["bench", "--device", "cpu", "--generator", "sequential"]) == 2
    assert "pass --only iteration with it" in capsys.readouterr().err
