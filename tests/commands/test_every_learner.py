"""The summary of every kept learner's meta-test: best on the tested split, meta-val's pick, last."""

from fastfree.commands.every_learner import summarize


def _row(it, val1, test1):
    return {"iteration": it, "logged_val": {"1": [val1, 1.0]}, "test": {"1": [test1, 0.5]}}


def test_summary_picks_on_each_split_separately():
    rows = [_row(20, 30.0, 35.0), _row(40, 33.0, 37.0), _row(60, 32.0, 37.0), _row(80, 31.0, 36.0)]
    s = summarize(rows, "test", {"1": 40})["1"]
    assert s["best_on_test"] == {"iteration": 40, "mean": 37.0, "ci95": 0.5}  # the first of equal maxima
    assert s["selected_on_val"] == {"iteration": 40, "mean": 37.0, "ci95": 0.5}
    assert s["last_evaluated"]["iteration"] == 80 and s["evaluations"] == 4
    s = summarize(rows, "test", {"1": 60})["1"]
    assert s["selected_on_val"]["mean"] == 37.0 and s["selected_on_val"]["iteration"] == 60


def test_a_pick_that_was_not_kept_is_named_not_invented():
    rows = [_row(100, 30.0, 35.0), _row(120, 31.0, 34.0)]
    assert summarize(rows, "test", {"1": 60})["1"]["selected_on_val"] == {"iteration": 60}
    assert summarize(rows, "test", {})["1"]["selected_on_val"] is None


def test_paired_difference_is_task_by_task():
    import numpy as np
    import pytest

    from fastfree.commands.every_learner import paired_difference
    a, b = [60.0, 40.0, 80.0, 20.0], [40.0, 20.0, 80.0, 20.0]
    d = paired_difference(a, b)
    assert d["mean"] == 10.0 and d["tasks"] == 4
    assert d["ci95"] == pytest.approx(1.96 * np.std([20.0, 20.0, 0.0, 0.0]) / 2)
    # the same shift on every task has no spread: the pair's interval is zero where each accuracy's is wide
    assert paired_difference([x + 20 for x in b], b)["ci95"] == 0.0
    with pytest.raises(ValueError, match="same non-empty tasks"):
        paired_difference(a, b[:3])


def test_summary_gives_the_best_gain_over_the_pick_and_the_last_per_task():
    rows = [_row(20, 30.0, 35.0), _row(40, 33.0, 40.0), _row(60, 32.0, 37.5)]
    per_task = {20: {"1": [40.0, 30.0]}, 40: {"1": [40.0, 40.0]}, 60: {"1": [35.0, 40.0]}}
    s = summarize(rows, "test", {"1": 20}, per_task)["1"]
    assert s["best_minus_selected"]["mean"] == 5.0 and s["best_minus_selected"]["tasks"] == 2
    assert s["best_minus_last"]["mean"] == 2.5
    assert summarize(rows, "test", {}, per_task)["1"]["best_minus_selected"] is None  # no pick: no pair
    assert "best_minus_selected" not in summarize(rows, "test", {"1": 20})["1"]  # without accuracies: absent
