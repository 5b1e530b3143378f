"""`fastfree compare` on two real runs: an ablation (one flag changed, the same pool, seed and
tasks) is paired task by task on meta-val and on meta-test, from what `fastfree train` stored."""

import json

import pytest

from fastfree.cli import main
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL


def test_an_ablation_is_compared_task_by_task(run, tmp_path, capsys):
    run_dir, reported = run
    other = tmp_path / "adam"
    assert main(["train", "--pool", str(run_dir.parent / "pool"), "--run-dir", str(other), "--bell-outer", "adam",
                 *TRAIN, *SMALL]) == 0
    capsys.readouterr()
    out = tmp_path / "c.json"
    assert main(["compare", str(run_dir), str(other), "--name", "paper", "--name", "adam", "--json", str(out)]) == 0
    md = capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got["differences_from_first"] == {"adam": "free.bell.outer: 'interpolate' there, 'adam' now"}
    # meta-val: both runs evaluated at 2 and 3 on the same 2 tasks; the pair is each task's difference
    val = got["meta_val_paired_minus_first"]["adam"]
    assert sorted(val) == ["2", "3"]
    for it, table in val.items():
        for shots, d in table.items():
            a = got["runs"]["paper"]["val_per_task"][it]["accuracies"][shots]
            b = got["runs"]["adam"]["val_per_task"][it]["accuracies"][shots]
            assert d["tasks"] == 2 and d["mean"] == pytest.approx(sum(b) / 2 - sum(a) / 2)
    assert "adam - paper, meta-val task by task on the same tasks" in md
    # meta-test: Random scored alike on every task (the same tasks), so the learners are paired
    test = got["paired_minus_first"]["adam"]
    assert set(test) == {"FREE (selected)", "FREE (last)"} and test["FREE (last)"]["1"]["tasks"] == 3
    assert got["runs"]["paper"]["results"] == reported
