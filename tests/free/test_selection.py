"""Model selection on meta-val per shot count: the pure rule, the file, and resuming a run whose
checkpoint predates it."""

import torch

import pytest

from fastfree.errors import FastFreeError
from fastfree.free.run import BEST, CHECKPOINT, train_free
from fastfree.free.selection import (
    for_shots,
    improved_shots,
    is_legacy,
    read_selected,
    selected_label,
    write_selected,
)
from tests.free.test_run import _ctx


def _state(v: float) -> dict:
    return {"w": torch.full((2,), v)}


def test_each_shot_count_keeps_its_own_best():
    best = {}
    first = improved_shots(best, {1: 30.0, 5: 40.0}, 10)
    assert first == {"1": {"iteration": 10, "val": 30.0}, "5": {"iteration": 10, "val": 40.0}}
    best.update(first)
    assert improved_shots(best, {1: 29.0, 5: 41.0}, 20) == {"5": {"iteration": 20, "val": 41.0}}
    assert improved_shots(best, {1: 30.0, 5: 40.0}, 30) == {}  # a tie keeps the earlier pick


def test_the_file_keeps_the_other_shot_counts_picks(tmp_path):
    path = tmp_path / BEST
    write_selected(path, _state(1.0), {"1": {"iteration": 10, "val": 30.0}, "5": {"iteration": 10, "val": 40.0}})
    write_selected(path, _state(2.0), {"5": {"iteration": 20, "val": 41.0}})
    got = read_selected(path)
    assert {k: (v.iteration, float(v.learner["w"][0])) for k, v in got.items()} == {1: (10, 1.0), 5: (20, 2.0)}
    assert selected_label(got) == "FREE (selected on meta-val per shot count: 1-shot at 10, 5-shot at 20)"
    assert for_shots(got, 5).iteration == 20
    with pytest.raises(FastFreeError, match="no meta-learner was selected for 10-shot"):
        for_shots(got, 10)
    assert read_selected(tmp_path / "missing.pt") == {}


def test_a_legacy_single_pick_serves_every_shot_count(tmp_path):
    path = tmp_path / BEST
    torch.save({"iteration": 7, "learner": _state(3.0), "val": 33.0}, path)
    got = read_selected(path)
    assert for_shots(got, 1) is for_shots(got, 5) and got[None].iteration == 7
    assert selected_label(got) == "FREE (selected on meta-val, iteration 7)"
    assert is_legacy({"iteration": 7, "val": 33.0}) and not is_legacy({"1": {"iteration": 7, "val": 30.0}})


def test_resuming_a_checkpoint_from_before_per_shot_selection(tiny_dataset, tmp_path):
    """The old single pick is measured per shot count on meta-val and competes from there on."""
    run = tmp_path / "run"
    train_free(_ctx(run, tiny_dataset), resume=False, stop_after=3)
    picked = read_selected(run / BEST)[1]
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    ckpt["best"] = {"iteration": picked.iteration, "val": 12.5}  # the old format: one pick, mean over shots
    torch.save(ckpt, run / CHECKPOINT)
    torch.save({"iteration": picked.iteration, "learner": picked.learner, "val": 12.5}, run / BEST)
    upgraded = train_free(_ctx(run, tiny_dataset), resume=True, stop_after=3)  # no new iteration: only the upgrade
    assert upgraded.best == {"1": {"iteration": picked.iteration, "val": pytest.approx(picked.val)}}
    now = read_selected(run / BEST)
    assert set(now) == {1} and all(torch.equal(now[1].learner[k], picked.learner[k]) for k in picked.learner)
    # the checkpoint is still in the old format; resuming again reads the upgraded picks, not none
    assert train_free(_ctx(run, tiny_dataset), resume=True, stop_after=3).best == upgraded.best
    state = train_free(_ctx(run, tiny_dataset), resume=True)  # and it competes with later iterations
    assert set(state.best) == {"1"} and state.best["1"]["val"] >= picked.val
    assert read_selected(run / BEST)[1].iteration == state.best["1"]["iteration"]


def test_resume_takes_back_a_pick_made_after_the_checkpoint(tiny_dataset, tmp_path):
    """An evaluation after the last checkpoint wrote its pick, then the run died: the resumed run's
    best_learner.pt holds the checkpoint's pick again (the resumed run may never meet that iteration)."""
    run = tmp_path / "run"
    state = train_free(_ctx(run, tiny_dataset), resume=False, stop_after=3)
    before = read_selected(run / BEST)[1]
    assert state.best["1"]["iteration"] == before.iteration <= 3
    late = {k: torch.zeros_like(v) for k, v in before.learner.items()}
    write_selected(run / BEST, late, {"1": {"iteration": 4, "val": 99.0}})  # after the checkpoint at 3
    resumed = train_free(_ctx(run, tiny_dataset), resume=True, stop_after=3)
    now = read_selected(run / BEST)[1]
    assert (now.iteration, now.val) == (before.iteration, pytest.approx(before.val)) and resumed.best == state.best
    assert all(torch.equal(now.learner[k], before.learner[k]) for k in before.learner)
