"""`fastfree train --shots K`: one shot setting per run, as the paper runs each (the published code's
num_sup_train = num_sup_test): K-shot replay tasks, meta-val selection and meta-test at K shots."""

import json

import pytest

from fastfree.cli import main
from fastfree.free import memory
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "pool"
    assert main(["pretrain", "--teachers", "2", "--epochs", "1", "--batch-size", "32", "--out", str(out),
                 "--device", "cpu", *SMALL]) == 0
    return out


def test_a_five_shot_run_replays_selects_and_tests_five_shot_tasks(pool, tmp_path, monkeypatch, capsys):
    drawn = []
    real = memory.MemoryBank.sample_tasks

    def recording(self, n_tasks, ways, shots, queries, generator=None):
        drawn.append(shots)
        return real(self, n_tasks, ways, shots, queries, generator)

    monkeypatch.setattr(memory.MemoryBank, "sample_tasks", recording)
    run_dir, out = tmp_path / "run", tmp_path / "t.json"
    train = ["train", "--pool", str(pool), "--run-dir", str(run_dir), *TRAIN, *SMALL]
    # the built-in data's 10 images per class reach replay's 5 + 15 after two teachers of a class
    assert main([*train, "--shots", "5", "--json", str(out)]) == 0
    assert drawn and set(drawn) == {5}
    r = json.loads(out.read_text())
    assert r["config"]["shots"] == [5] and r["config"]["free"]["replay"]["shots"] == 5
    assert {k: set(v) for k, v in r["results"].items()} == {k: {"5"} for k in r["results"]}
    assert "replayed" not in (run_dir / "results.md").read_text()
    vals = [m["val"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val" in m]
    assert vals and all(set(v) == {"5"} for v in vals)
    # eval --run tests the run's own shot setting by default, and reproduces its numbers
    e = tmp_path / "e.json"
    assert main(["eval", "--run", str(run_dir), "--method", "learner", "--learner", "last", "--tasks", "3",
                 "--device", "cpu", "--json", str(e)]) == 0
    got = json.loads(e.read_text())["results"]
    assert [x["shots"] for x in got] == [5]
    assert got[0]["mean"] == pytest.approx(r["results"]["FREE (last)"]["5"]["mean"])
    # resuming needs the same shot setting
    capsys.readouterr()
    assert main([*train, "--resume"]) == 2
    assert "different configuration" in (err := capsys.readouterr().err) and "shots: [5] there, None now" in err


def test_by_default_one_run_replays_one_shot_tasks_for_both_settings(pool, tmp_path, monkeypatch):
    drawn = []
    real = memory.MemoryBank.sample_tasks
    monkeypatch.setattr(memory.MemoryBank, "sample_tasks",
                        lambda self, n, w, shots, q, g=None: drawn.append(shots) or real(self, n, w, shots, q, g))
    out = tmp_path / "t.json"
    assert main(["train", "--pool", str(pool), "--run-dir", str(tmp_path / "run"), "--json", str(out), *TRAIN,
                 *SMALL]) == 0
    r = json.loads(out.read_text())
    assert set(drawn) == {1} and "shots" not in r["config"]
    assert "5-shot: the meta-learner replayed 1-shot tasks" in (tmp_path / "run" / "results.md").read_text()
    assert set(r["results"]["FREE (last)"]) == {"1", "5"}
