"""The acceptance check of `fastfree train --preset demo`: FREE beats Random on the same tasks."""

import json

import pytest

from fastfree.cli import main


@pytest.mark.slow
def test_demo_run_beats_random_on_the_same_meta_test_tasks(tmp_path):
    """The whole demo job (pool, 60 FREE iterations, meta-val selection, 200 meta-test tasks):
    for 1 and 5 shots, FREE's margin over Random must exceed the sum of the two 95% half-intervals."""
    out = tmp_path / "r.json"
    assert main(["train", "--preset", "demo", "--run-dir", str(tmp_path / "run"), "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    free = next(v for k, v in results.items() if k.startswith("FREE (selected"))
    rand = results["Random"]
    for shots in ("1", "5"):
        assert free[shots]["mean"] - rand[shots]["mean"] > free[shots]["ci95"] + rand[shots]["ci95"], (shots, results)
