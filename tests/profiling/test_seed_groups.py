"""`fastfree compare --average-seeds`: runs that differ only in --seed grouped and averaged per task."""

import json

import pytest

from fastfree.errors import FastFreeError
from fastfree.profiling.compare_runs import compare, main
from fastfree.profiling.seed_groups import averaged_minus_first, averaged_val_minus_first, seed_groups
from tests.profiling.test_compare_runs import PROTOCOL, _run

RANDOM = {"1": [20.0, 20.0, 20.0, 20.0]}


def _seeded(path, targets, seed, selected, last=None, val=None):
    """A finished run of BELL `targets` and training `seed` whose selected learner scored `selected`
    on 4 meta-test tasks (the same tasks in every run: Random alike); `val`: its meta-val at iteration
    3, per task (default: the meta-test's)."""
    per_task = {"FREE (selected on meta-val, iteration 3)": {"1": selected},
                "FREE (last)": {"1": last or selected}, "Random": RANDOM}
    table = {k: {"1": {"mean": sum(v["1"]) / 4, "ci95": 1.0, "tasks": 4}} for k, v in per_task.items()}
    val = val or selected
    run = _run(path, "interpolate", {3: {"1": [sum(val) / 4, 1.0]}}, table, per_task=per_task,
               val_per_task={3: {"1": val}})
    config = json.loads((run / "config.json").read_text())
    config["free"].update(seed=seed, bell={"outer": "interpolate", "targets": targets})
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_runs_that_differ_only_in_seed_are_one_group():
    soft42, soft7, hard7 = ({"free": {"seed": s, "k": 5}, "pool": "/p"} for s in (42, 7, 7))
    hard7["free"]["k"] = 2
    assert seed_groups([soft42, hard7, soft7], ["a", "b", "c"]) == [[0, 2], [1]]
    with pytest.raises(FastFreeError, match="a and c have the same settings and seed \\(42\\): a rerun"):
        seed_groups([soft42, soft7, soft42], ["a", "b", "c"])


def test_each_group_is_averaged_per_task_then_paired_with_the_first():
    per_task = [
        {"FREE (selected on meta-val, iteration 2)": {"1": [40.0, 50.0, 30.0, 20.0]}, "Random": RANDOM},
        {"FREE (selected on meta-val, iteration 3)": {"1": [40.0, 30.0, 50.0, 20.0]}, "Random": RANDOM},
        {"FREE (selected on meta-val, iteration 3)": {"1": [50.0, 50.0, 40.0, 30.0]}, "Random": RANDOM},
        {"FREE (selected on meta-val, iteration 1)": {"1": [50.0, 30.0, 60.0, 30.0]}, "Random": RANDOM},
    ]
    # group 1 averages to 40, 40, 40, 20; group 2 to 50, 40, 50, 30: +10, 0, +10, +10
    got = averaged_minus_first(per_task, [[0, 1], [2, 3]])[1]["FREE (selected)"]["1"]
    assert got["mean"] == 7.5 and got["tasks"] == 4 and got["first_mean"] == 35.0 and got["group_mean"] == 42.5
    assert got["ci95"] == pytest.approx(1.96 * 4.330127 / 2)  # population std of 10, 0, 10, 10
    other_tasks = [*per_task[:3], {**per_task[3], "Random": {"1": [20.0, 20.0, 20.0, 30.0]}}]
    assert "Random scored differently" in averaged_minus_first(other_tasks, [[0, 1], [2, 3]])
    assert "no results_per_task.json" in averaged_minus_first([*per_task[:3], None], [[0, 1], [2, 3]])


def test_meta_val_is_averaged_where_every_run_of_both_groups_evaluated_the_same_tasks():
    def stored(acc, protocol=PROTOCOL):
        return {"protocol": protocol, "accuracies": {"1": acc}}
    val = [{3: stored([40.0, 50.0, 30.0, 20.0]), 6: stored([10.0] * 4)},
           {3: stored([40.0, 30.0, 50.0, 20.0]), 6: stored([10.0] * 4)},
           {3: stored([50.0, 50.0, 40.0, 30.0]), 6: stored([20.0] * 4)},
           {3: stored([50.0, 30.0, 60.0, 30.0])}]  # did not evaluate at 6
    got = averaged_val_minus_first(val, [[0, 1], [2, 3]], [True] * 4)[1]
    assert list(got) == [3] and got[3]["1"]["mean"] == 7.5 and got[3]["1"]["group_mean"] == 42.5
    assert got[3]["1"]["ci95"] == pytest.approx(1.96 * 4.330127 / 2)
    other_protocol = [*val[:3], {3: stored([50.0] * 4, {**PROTOCOL, "tasks": 8})}]
    assert averaged_val_minus_first(other_protocol, [[0, 1], [2, 3]], [True] * 4) == {1: {}}
    assert averaged_val_minus_first(val, [[0, 1], [2, 3]], [True, True, True, False]) == {1: {}}  # other data


def test_compare_average_seeds_reports_the_groups_and_their_differences(tmp_path, capsys):
    runs = [_seeded(tmp_path / "soft42", "soft", 42, [40.0, 50.0, 30.0, 20.0]),
            _seeded(tmp_path / "hard7", "hard", 7, [50.0, 30.0, 60.0, 30.0]),
            _seeded(tmp_path / "soft7", "soft", 7, [40.0, 30.0, 50.0, 20.0]),
            _seeded(tmp_path / "hard42", "hard", 42, [50.0, 50.0, 40.0, 30.0], val=[50.0, 50.0, 40.0, 50.0])]
    payload, md = compare(runs, average_seeds=True)
    assert payload["seed_groups"] == [["soft42", "soft7"], ["hard7", "hard42"]]
    assert payload["seeds_averaged_minus_first"]["group 2"]["FREE (selected)"]["1"]["mean"] == 7.5
    assert "- group 2: hard7 (seed 7), hard42 (seed 42)" in md
    assert "group 2 - group 1 (free.bell.targets: 'soft' there, 'hard' now):" in md
    assert "- FREE (selected): 1-shot +7.50 +- 4.24 (42.50 vs 35.00)" in md
    # meta-val (iteration 3, 1-based) averaged likewise: hard42 scored 50 instead of 30 on its last task, so
    # group 2 averages 50, 40, 50, 40 against 40, 40, 40, 20: +10 on average (+7.5 on meta-test)
    assert payload["seeds_meta_val_averaged_minus_first"]["group 2"][3]["1"]["mean"] == 10.0
    assert "group 2 - group 1, meta-val averaged task by task (free.bell.targets: 'soft' there, 'hard' now):" in md
    assert "- at 3: 1-shot +10.00 +- " in md
    assert "seed_groups" not in compare(runs)[0]  # only when asked
    assert main([*map(str, runs), "--average-seeds", "--json", str(tmp_path / "c.json")]) == 0
    assert "Seeds averaged task by task" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["seed_groups"][1] == ["hard7", "hard42"]
    one_setting = compare(runs[::2], average_seeds=True)[1]
    assert "one group only" in one_setting
