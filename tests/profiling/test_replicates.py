"""profiling/replicates.py: saved comparisons pooled, each setting minus the base averaged per task."""

import json

import pytest

from fastfree.errors import FastFreeError
from fastfree.profiling.compare_runs import compare
from fastfree.profiling.replicates import load_comparison, main, pooled
from tests.profiling.test_seed_groups import _seeded


def _comparison(tmp_path, name, seed, soft, hard, wrap=False):
    """A saved `fastfree compare --json` of a soft-label run and a hard-label one (same seed)."""
    runs = [_seeded(tmp_path / f"{name}-soft", "soft", seed, soft),
            _seeded(tmp_path / f"{name}-hard", "hard", seed, hard)]
    payload, _ = compare(runs, ["free", "hard"])
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"compare": payload} if wrap else payload))  # results/ files keep it under "compare"
    return path


def test_replicates_are_averaged_per_task_then_paired_with_the_base(tmp_path, capsys):
    a = _comparison(tmp_path, "pool1", 42, [40.0, 50.0, 30.0, 20.0], [50.0, 50.0, 40.0, 30.0])
    b = _comparison(tmp_path, "pool2", 7, [40.0, 30.0, 50.0, 20.0], [50.0, 30.0, 60.0, 30.0], wrap=True)
    # per task: free averages 40, 40, 40, 20; hard 50, 40, 50, 30: +10, 0, +10, +10 (as test_seed_groups')
    payload, md = pooled([load_comparison(a), load_comparison(b)], ["pool1", "pool2"])
    got = payload["averaged_minus_base"]["hard"]["FREE (selected)"]["1"]
    assert (got["mean"], got["tasks"], got["first_mean"], got["group_mean"]) == (7.5, 4, 35.0, 42.5)
    assert payload["groups"] == {"group 1": ["pool1:free", "pool2:free"], "group 2": ["pool1:hard", "pool2:hard"]}
    assert payload["meta_val_averaged_minus_base"]["hard"][3]["1"]["mean"] == 7.5  # meta-val as meta-test here
    assert "- group 2: pool1:hard (seed 42), pool2:hard (seed 7)" in md
    assert "- FREE (selected): 1-shot +7.50 +- 4.24 (42.50 vs 35.00)" in md and "- at 3: 1-shot +7.50" in md
    assert main([str(a), str(b), "--label", "s42", "--label", "s7", "--json", str(tmp_path / "r.json")]) == 0
    assert "- group 1: s42:free (seed 42), s7:free (seed 7)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["base"] == "free"
    flipped = pooled([load_comparison(a), load_comparison(b)], ["1", "2"], base="hard")[0]
    assert flipped["averaged_minus_base"]["free"]["FREE (selected)"]["1"]["mean"] == -7.5


def test_what_cannot_be_pooled_is_refused_naming_the_fix(tmp_path, capsys):
    a = _comparison(tmp_path, "pool1", 42, [40.0] * 4, [50.0] * 4)
    b = _comparison(tmp_path, "pool2", 7, [40.0] * 4, [50.0] * 4)
    runs = [load_comparison(a), load_comparison(b)]
    with pytest.raises(FastFreeError, match="pool at least two comparisons"):
        pooled(runs[:1], ["1"])
    with pytest.raises(FastFreeError, match="--base 'erm' is not a run of 1, 2"):
        pooled(runs, ["1", "2"], base="erm")
    with pytest.raises(FastFreeError, match="no run name besides 'free' is in every comparison"):
        pooled([runs[0], {"free": runs[1]["free"], "k2": runs[1]["hard"]}], ["1", "2"])
    other_tasks = json.loads(json.dumps(runs[1]))
    other_tasks["hard"]["per_task"]["Random"]["1"][0] = 25.0
    assert "Random scored differently" in pooled([runs[0], other_tasks], ["1", "2"])[0]["averaged_minus_base"]
    with pytest.raises(FastFreeError, match="no such file"):
        load_comparison(tmp_path / "absent.json")
    (tmp_path / "runless.json").write_text("{}")
    with pytest.raises(FastFreeError, match="no runs in it"):
        load_comparison(tmp_path / "runless.json")
    with pytest.raises(SystemExit):
        main([str(a), str(b), "--label", "only-one"])
    assert "1 --label for 2 files" in capsys.readouterr().err
