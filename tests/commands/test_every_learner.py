"""The summary of every kept learner's meta-test: best on the tested split, meta-val's pick, last."""

from fastfree.commands.every_learner import summarize


def _row(it, val1, test1):
    return {"iteration": it, "val": {"1": [val1, 1.0]}, "test": {"1": [test1, 0.5]}}


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
