"""A run whose files were damaged after `train` wrote them (a copy cut short, a failing disk, an edit):
each command that reads them says which file and what to do, instead of a traceback, and the fix it
names works (fastfree/read_back.py)."""

import json
import shutil

import pytest

from fastfree.cli import main
from fastfree.free.kept import LEARNERS
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the shared small run, free to damage."""
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    return out


def _cut(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _eval(run_dir, *extra) -> int:
    return main(["eval", "--method", "learner", "--run", str(run_dir), "--tasks", "2", "--device", "cpu", *extra])


def _resume(run, run_dir, *extra) -> int:
    return main(["train", "--pool", str(run[0].parent / "pool"), "--run-dir", str(run_dir), "--resume", *TRAIN,
                 *SMALL, *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_a_damaged_checkpoint_is_named_and_the_selected_learner_still_meta_tests(run, copy, capsys):
    _cut(copy / "checkpoint.pt")
    for command in (lambda: _resume(run, copy, "--iterations", "4"), lambda: _eval(copy, "--learner", "last")):
        assert command() == 2
        err = _error(capsys)
        assert "checkpoint.pt is damaged" in err and "another --run-dir" in err and "--learner selected" in err
    assert _eval(copy, "--learner", "selected") == 0  # as the message says


def test_a_damaged_selection_names_the_learners_that_still_meta_test(copy, capsys):
    _cut(copy / "best_learner.pt")
    assert _eval(copy, "--learner", "selected") == 2
    err = _error(capsys)
    assert "best_learner.pt is damaged" in err and "--learner last" in err
    assert _eval(copy, "--learner", "last") == 0


def test_a_damaged_kept_learner_is_named_and_deleting_it_leaves_the_others(copy, capsys):
    kept = sorted((copy / LEARNERS).glob("iter_*.pt"))
    assert len(kept) >= 2
    _cut(kept[0])
    assert _eval(copy, "--learner", "every") == 2
    assert f"{kept[0].name} is damaged" in _error(capsys)
    kept[0].unlink()
    assert _eval(copy, "--learner", "every") == 0


@pytest.mark.parametrize("name", ["config.json", "input_space.json"])
def test_a_damaged_record_is_named(copy, tmp_path, capsys, name):
    """export reads both (eval --run reads the run's data instead of input_space.json)."""
    (copy / name).write_text('{"image_size": 3')
    export = ["export", "--run", str(copy), "--shots", "1", "--out", str(tmp_path / "l.safetensors")]
    assert main(export) == 2
    assert f"{name} is damaged (not valid JSON" in _error(capsys)
    if name == "input_space.json":  # the fix it names: the run's data says the same
        (copy / name).unlink()
        assert main(export) == 0


def test_resume_names_a_damaged_pool_record_and_earlier_results(run, copy, capsys):
    for name in ("pools.json", "results.json"):
        saved = (copy / name).read_text()
        (copy / name).write_text(saved[:10])
        assert _resume(run, copy, "--iterations", "4") == 2
        assert f"{name} is damaged" in _error(capsys)
        (copy / name).write_text(saved)


def test_metrics_torn_at_the_end_by_a_kill_still_compare_and_damaged_before_it_are_named(run, copy, tmp_path, capsys):
    metrics = copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines) + "\n" + lines[-1][:15])  # a kill while the next line was written
    out = tmp_path / "c.json"
    assert main(["compare", str(run[0]), str(copy), "--json", str(out)]) == 0
    whole, torn = json.loads(out.read_text())["runs"].values()
    assert torn["meta_val"] == whole["meta_val"] and torn["iterations_done"] == whole["iterations_done"]
    metrics.write_text("\n".join([lines[0][:15], *lines[1:]]) + "\n")
    assert main(["compare", str(run[0]), str(copy)]) == 2
    assert "metrics.jsonl is damaged (line 1 is not valid JSON" in _error(capsys)
