"""compare_runs reads run directories as `fastfree train` writes them and lines them up."""

import json

import pytest

from fastfree.profiling.compare_runs import compare, differences, main, read_run


PROTOCOL = {"tasks": 4, "ways": 5, "shots": [1], "queries": 15, "steps": 10, "lr": 0.01, "seed": 0}


def _run(path, outer, curve, results=None, seconds=(10.0, 12.0, 14.0), per_task=None, val_per_task=None,
         data=None):
    """A run directory: config.json, metrics.jsonl (0-based iterations, "val" on evaluations, with
    val_per_task: each meta-val task's accuracy and the protocol), results.json."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"free": {"iterations": 3, "bell": {"outer": outer}}, "seed": 0,
                                                  "data": data or {"source": "builtin"}}))
    val_per_task = val_per_task or {}
    lines = [{"iteration": i, "iteration_s": s, **({"val": curve[i + 1]} if i + 1 in curve else {}),
              **({"val_per_task": val_per_task[i + 1], "val_protocol": PROTOCOL} if i + 1 in val_per_task else {})}
             for i, s in enumerate(seconds)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    if results is not None:
        (path / "results.json").write_text(json.dumps({"results": results, "data_recovery_seconds": 7.5,
                                                       "train_seconds": 40.0, "iterations": len(seconds),
                                                       "torch": "2.13.0+cpu", "threads": 1, "host": "vm"}))
    if per_task is not None:
        (path / "results_per_task.json").write_text(json.dumps(per_task))
    return path


def test_two_runs_side_by_side(tmp_path):
    a = _run(tmp_path / "paper", "interpolate", {2: {"1": [30.0, 1.0], "5": [40.0, 1.0]},
                                                 3: {"1": [31.5, 1.0], "5": [41.0, 1.0]}},
             {"FREE (last)": {"1": {"mean": 35.0, "ci95": 0.8, "tasks": 600}}})
    b = _run(tmp_path / "code", "adam", {3: {"1": [29.25, 1.0], "5": [42.0, 1.0]}})  # no meta-test yet
    payload, md = compare([a, b])
    assert payload["differences_from_first"] == {"code": "free.bell.outer: 'interpolate' there, 'adam' now"}
    runs = payload["runs"]
    assert runs["paper"]["iteration_seconds"] == 36.0 and runs["paper"]["iterations_done"] == 3
    assert [e["iteration"] for e in runs["paper"]["meta_val"]] == [2, 3]  # 1-based, as the labels count
    assert runs["code"]["results"] is None and "data_recovery_seconds" not in runs["code"]
    assert (runs["paper"]["torch"], runs["paper"]["threads"]) == ("2.13.0+cpu", 1) and "host" not in runs["paper"]
    assert "| 2 | 30.00 | 40.00 | - | - |" in md  # the other run did not evaluate at 2
    assert "| 3 | 31.50 | 41.00 | 29.25 | 42.00 |" in md
    assert "| paper | FREE (last) | 35.00 +- 0.80 | - |" in md
    assert "| code | 3 | 36 | - |" in md and "| paper | 3 | 36 | 8 |" in md
    # a lengthened run: its meta-test at the earlier end (results-<N>it.json) is read too
    (a / "results-2it.json").write_text(json.dumps({"results": {"Random": {"5": {"mean": 20.0, "ci95": 0.5}}},
                                                    "iterations": 2}))
    payload, md = compare([a, b])
    assert payload["runs"]["paper"]["earlier_ends"] == {2: {"Random": {"5": {"mean": 20.0, "ci95": 0.5}}}}
    assert "| paper | at 2 iterations: Random | - | 20.00 +- 0.50 |" in md
    # mid-lengthening (results.json already kept as results-2it.json): that end is the run's results
    (b / "results-2it.json").write_text(json.dumps({"results": {"Random": {"1": {"mean": 9.0, "ci95": 0.5}}},
                                                    "iterations": 2}))
    assert compare([a, b])[0]["runs"]["code"]["results"] == {"Random": {"1": {"mean": 9.0, "ci95": 0.5}}}


def test_the_command_writes_json_and_refuses_what_is_not_a_run(tmp_path, capsys):
    a = _run(tmp_path / "a", "interpolate", {3: {"1": [30.0, 1.0]}})
    b = _run(tmp_path / "b", "interpolate", {3: {"1": [30.0, 1.0]}})
    out = tmp_path / "c.json"
    assert main([str(a), str(b), "--name", "x", "--name", "y", "--what", "same", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["what"] == "same" and got["differences_from_first"] == {"y": "the same configuration"}
    assert main([str(a), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastfree compare: error:") and "no config.json" in err
    assert main([str(a), str(b), "--name", "x"]) == 2
    assert "1 --name for 2 runs" in capsys.readouterr().err
    assert main([str(a), str(b), "--name", "x", "--name", "x"]) == 2
    assert "--name given twice (x)" in capsys.readouterr().err


def test_runs_of_one_folder_name_keep_apart(tmp_path):
    """exp1/seed0 and exp2/seed0 were both 'seed0': the second overwrote the first in the comparison."""
    (tmp_path / "exp1").mkdir()
    (tmp_path / "exp2").mkdir()
    a = _run(tmp_path / "exp1" / "seed0", "interpolate", {3: {"1": [30.0, 1.0]}})
    b = _run(tmp_path / "exp2" / "seed0", "adam", {3: {"1": [31.0, 1.0]}})
    payload, md = compare([a, b])
    assert list(payload["runs"]) == ["exp1/seed0", "exp2/seed0"]
    assert payload["differences_from_first"] == {"exp2/seed0": "free.bell.outer: 'interpolate' there, 'adam' now"}


def test_free_learners_are_compared_task_by_task_on_the_same_tasks(tmp_path):
    random = {"1": [20.0, 40.0, 30.0, 10.0]}
    base = {"FREE (selected on meta-val, iteration 2)": {"1": [40.0, 50.0, 30.0, 20.0]},
            "FREE (last)": {"1": [40.0, 50.0, 30.0, 20.0]}, "Random": random}
    other = {"FREE (selected on meta-val, iteration 3)": {"1": [50.0, 50.0, 40.0, 30.0]},  # +10, 0, +10, +10
             "FREE (last)": {"1": [40.0, 50.0, 30.0, 20.0]}, "Random": random}
    table = {k: {"1": {"mean": 1.0, "ci95": 1.0, "tasks": 4}} for k in base}
    a = _run(tmp_path / "a", "interpolate", {3: {"1": [30.0, 1.0]}}, table, per_task=base)
    b = _run(tmp_path / "b", "adam", {3: {"1": [30.0, 1.0]}}, table, per_task=other)
    payload, md = compare([a, b])
    got = payload["paired_minus_first"]["b"]
    assert got["FREE (selected)"]["1"]["mean"] == 7.5 and got["FREE (selected)"]["1"]["tasks"] == 4
    assert got["FREE (selected)"]["1"]["ci95"] == pytest.approx(1.96 * 4.330127 / 2)  # population std of 10,0,10,10
    assert got["FREE (last)"]["1"] == {"mean": 0.0, "ci95": 0.0, "tasks": 4}
    assert "- FREE (selected): 1-shot +7.50 +- 4.24" in md
    # another set of tasks (Random scored differently): no pairing, and it says why
    c = _run(tmp_path / "c", "adam", {3: {"1": [30.0, 1.0]}}, table,
             per_task={**other, "Random": {"1": [20.0, 40.0, 30.0, 20.0]}})
    payload, md = compare([a, c])
    assert payload["paired_minus_first"] == {"c": None} and "not paired (Random scored differently" in md


def test_lengthened_runs_compare_at_one_length(tmp_path, capsys):
    """--at N: each run's meta-test at N iterations (results.json or the results-<N>it.json a
    lengthening kept), its meta-val and time up to N, and --iterations left out of the differences."""
    table = {"Random": {"1": {"mean": 1.0, "ci95": 1.0, "tasks": 2}},
             "FREE (last)": {"1": {"mean": 2.0, "ci95": 1.0, "tasks": 2}}}
    per_task = {"Random": {"1": [0.0, 2.0]}, "FREE (last)": {"1": [1.0, 3.0]}}
    a = _run(tmp_path / "a", "interpolate", {2: {"1": [30.0, 1.0]}, 3: {"1": [31.0, 1.0]}}, table,
             per_task=per_task)
    b = _run(tmp_path / "b", "adam", {2: {"1": [29.0, 1.0]}}, seconds=(10.0, 12.0))
    (b / "results-2it.json").write_text(json.dumps({"results": table, "iterations": 2}))  # lengthened from 2 ...
    (b / "results_per_task-2it.json").write_text(json.dumps({**per_task, "FREE (last)": {"1": [2.0, 3.0]}}))
    config = json.loads((b / "config.json").read_text())
    config["free"]["iterations"] = 5  # ... to 5, still running
    (b / "config.json").write_text(json.dumps(config))
    (a / "results.json").write_text(json.dumps({"results": table, "iterations": 2}))  # a ended at 2 too
    payload, md = compare([a, b], at=2)
    assert payload["differences_from_first"] == {"b": "free.bell.outer: 'interpolate' there, 'adam' now"}
    assert payload["paired_minus_first"]["b"]["FREE (last)"]["1"]["mean"] == 0.5
    assert [e["iteration"] for e in payload["runs"]["a"]["meta_val"]] == [2]  # not 3: after the length compared
    assert payload["runs"]["a"]["iteration_seconds"] == 22.0
    assert main([str(a), str(b), "--at", "4"]) == 2
    assert "no meta-test at 4 iterations (it has: 2); pass one of those to --at" in capsys.readouterr().err


def test_meta_val_is_compared_task_by_task_where_both_runs_stored_the_same_tasks(tmp_path):
    curve = {2: {"1": [25.0, 1.0]}, 3: {"1": [30.0, 1.0]}}
    a = _run(tmp_path / "a", "interpolate", curve, val_per_task={2: {"1": [20.0, 40.0, 20.0, 20.0]},
                                                                 3: {"1": [30.0, 30.0, 30.0, 30.0]}})
    b = _run(tmp_path / "b", "adam", curve, val_per_task={3: {"1": [40.0, 30.0, 40.0, 40.0]}})  # +10, 0, +10, +10
    payload, md = compare([a, b])
    got = payload["meta_val_paired_minus_first"]["b"]
    assert list(got) == [3]  # b stored no tasks at 2
    assert got[3]["1"]["mean"] == 7.5 and got[3]["1"]["ci95"] == pytest.approx(1.96 * 4.330127 / 2)
    assert "b - a, meta-val task by task on the same tasks" in md and "| 3 | +7.50 +- 4.24 |" in md
    # other data, or another task protocol: other tasks, not paired
    c = _run(tmp_path / "c", "adam", curve, val_per_task={3: {"1": [40.0] * 4}}, data={"source": "cifar-fs"})
    assert compare([a, c])[0]["meta_val_paired_minus_first"] == {"c": {}}
    d = _run(tmp_path / "d", "adam", curve, val_per_task={3: {"1": [40.0] * 4}})
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    lines[2]["val_protocol"] = {**PROTOCOL, "seed": 1}
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    payload, md = compare([a, d])
    assert payload["meta_val_paired_minus_first"] == {"d": {}} and "meta-val task by task" not in md


def _every(run_dir, rows, split="val"):
    """What `fastfree eval --run RUN --method learner --learner every --split val --per-task` writes."""
    return {"command": "eval", "learner": "every", "split": split, "run": str(run_dir),
            "config": {**PROTOCOL, "chunk": 50, "engine": "auto"},
            "evaluations": [{"iteration": it, "logged_val": {}, split: {"1": [sum(acc) / 4, 1.0]}}
                            for it, acc in rows.items()],
            "per_task_accuracy": {str(it): {"1": acc} for it, acc in rows.items()}}


def test_runs_that_did_not_store_meta_val_tasks_get_them_from_a_reproducing_evaluation(tmp_path, capsys):
    curve = {3: {"1": [30.0, 1.0]}}
    a = _run(tmp_path / "a", "interpolate", curve, val_per_task={3: {"1": [30.0, 30.0, 30.0, 30.0]}})
    old = _run(tmp_path / "old", "adam", curve)  # from before meta-val's tasks were stored
    assert compare([a, old])[0]["meta_val_paired_minus_first"] == {"old": {}}
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_every(old, {3: [40.0, 30.0, 20.0, 30.0]})))  # mean 30.0, as logged
    payload, _ = compare([a, old], val_every=[good])
    assert payload["meta_val_paired_minus_first"]["old"][3]["1"]["mean"] == 0.0
    assert payload["runs"]["old"]["val_per_task"][3]["protocol"] == PROTOCOL
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_every(old, {3: [40.0, 40.0, 20.0, 30.0]})))  # 32.5: other tasks
    assert main([str(a), str(old), "--val-every", str(bad)]) == 2
    assert "iteration 3 1-shot meta-val measured 32.50, the run logged 30.00: not the tasks" in capsys.readouterr().err
    test_split = tmp_path / "test.json"
    test_split.write_text(json.dumps(_every(old, {3: [30.0] * 4}, split="test")))
    assert main([str(a), str(old), "--val-every", str(test_split)]) == 2
    assert "not a per-task meta-val of every learner" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(_every(tmp_path / "nowhere", {3: [30.0] * 4})))
    assert main([str(a), str(old), "--val-every", str(elsewhere)]) == 2
    assert "which is not exactly one of the runs compared" in capsys.readouterr().err
    assert main([str(a), str(old), "--val-every", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: not a readable JSON file" in capsys.readouterr().err


def test_pools_are_compared_by_their_teachers(tmp_path):
    """The same teachers given by another path (or as a run's own pool) were listed as a difference,
    and another pool pretrained again at the same path as none."""
    def with_pool(name, pool, digest):
        run = _run(tmp_path / name, "interpolate", {3: {"1": [30.0, 1.0]}})
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "pool": pool}))
        if digest is not None:
            (run / "pools.json").write_text(json.dumps({"pools": [{"path": pool or "own", "weights_sha256": digest}]}))
        return run

    a = with_pool("a", "/pools/p", "a" * 64)
    runs = [read_run(r) for r in (a, with_pool("b", None, "a" * 64), with_pool("c", "/pools/p", "c" * 64),
                                  with_pool("d", None, None))]
    same, other, older = differences(runs)
    assert same == "the same configuration"
    assert "'/pools/p (other teachers: weights sha256 cccccccccccc)'" in other
    own = differences([read_run(with_pool("f", None, "f" * 64)), read_run(with_pool("e", None, "e" * 64))])[0]
    assert "'its own pool (other teachers: weights sha256 eeeeeeeeeeee)'" in own
    assert "pool" in older  # a run from before pools.json: compared as configured


def test_the_same_data_in_another_folder_is_the_same_by_its_digest(tmp_path):
    """A run whose data moved (config.json names the new folder) or was named by a variable compares as
    on the same data where both recorded its digest (data.json); other data stays a difference."""
    a = _run(tmp_path / "a", "interpolate", {3: {"1": [30.0, 1.0]}}, data={"source": "cifar-fs", "root": "/x"})
    b = _run(tmp_path / "b", "interpolate", {3: {"1": [30.0, 1.0]}}, data={"source": "cifar-fs", "root": "/y"})
    assert "data.root" in differences([read_run(a), read_run(b)])[0]  # no digests: as configured
    for run, digest in ((a, "1" * 64), (b, "1" * 64)):
        (run / "data.json").write_text(json.dumps({"sha256": [digest]}))
    assert differences([read_run(a), read_run(b)]) == ["the same configuration"]
    (b / "data.json").write_text(json.dumps({"sha256": ["2" * 64]}))
    assert "data.root" in differences([read_run(a), read_run(b)])[0]
