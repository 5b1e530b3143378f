"""`fastfree eval --run`: a train run's meta-learner (or a Random learner of its shape) meta-tested
again reproduces what the run reported on the same tasks; misuse names the fix."""

import json

import pytest

from fastfree.cli import main
from tests.test_cli import SMALL

TRAIN = ["--iterations", "3", "--warmup", "1", "--eval-every", "2", "--val-tasks", "2", "--test-tasks", "3",
         "--teachers-per-iteration", "2", "--k", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    pool = root / "pool"
    assert main(["pretrain", "--teachers", "2", "--epochs", "1", "--batch-size", "32", "--out", str(pool),
                 "--device", "cpu", *SMALL]) == 0
    out = root / "t.json"
    assert main(["train", "--pool", str(pool), "--run-dir", str(root / "run"), "--json", str(out), *TRAIN,
                 *SMALL]) == 0
    return root / "run", json.loads(out.read_text())["results"]


def _eval(tmp_path, run_dir, *extra) -> dict:
    out = tmp_path / "e.json"
    assert main(["eval", "--run", str(run_dir), "--tasks", "3", "--device", "cpu", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def _table(payload: dict) -> dict:
    return {str(r["shots"]): pytest.approx(r["mean"]) for r in payload["results"]}


def test_each_learner_reproduces_the_runs_meta_test(run, tmp_path):
    run_dir, reported = run
    selected = next(k for k in reported if k.startswith("FREE (selected"))
    for extra, name in ((["--method", "learner"], selected), (["--method", "learner", "--learner", "last"],
                                                               "FREE (last)"), (["--method", "random"], "Random")):
        got = _eval(tmp_path, run_dir, *extra)
        assert _table(got) == {s: v["mean"] for s, v in reported[name].items()}, name
        assert got["dataset"] == "builtin" and got["split"] == "test"
    assert got["learner"] == "Random"


def test_meta_val_and_errors_name_the_fix(run, tmp_path, capsys):
    run_dir, _ = run
    assert _eval(tmp_path, run_dir, "--method", "learner", "--split", "val")["split"] == "val"
    cases = [
        (["--method", "learner"], "--run RUN_DIR"),
        (["--method", "average", "--run", str(run_dir)], "drop --run and pass --pool"),
        (["--method", "random", "--learner", "last"], "it needs --method learner"),
        (["--method", "learner", "--run", str(tmp_path)], "no config.json in"),
        (["--method", "learner", "--run", str(run_dir), "--ways", "4", "--tasks", "1"], "use --ways 5"),
    ]
    for extra, message in cases:
        assert main(["eval", "--device", "cpu", *extra]) == 2, message
        assert message in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text((run_dir / "config.json").read_text())
    assert main(["eval", "--device", "cpu", "--method", "learner", "--run", str(fresh)]) == 2
    assert "--learner last" in capsys.readouterr().err
