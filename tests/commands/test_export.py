"""`fastfree export`: a run's meta-learner as one file that `adapt --learner-file` uses exactly as `adapt --run`
uses the run, with no run directory left; per-shot picks, the last learner, refusals."""

import json
import shutil

import pytest
import torch

from fastfree.cli import main
from fastfree.commands.run_learner import INPUT_SPACE, last_learner
from dataclasses import replace

from fastfree.free.learner_file import load_learner, read_learner_file, write_learner_file
from fastfree.free.selection import read_selected
from tests.commands.test_adapt import _adapt, _write_task
from tests.test_cli import SMALL

CPU = torch.device("cpu")


def _export(run_dir, out, *extra) -> dict:
    js = out.with_suffix(".json")
    assert main(["export", "--run", str(run_dir), "--out", str(out), "--json", str(js), *extra]) == 0
    return json.loads(js.read_text())


def _adapt_file(task_dir, file, *extra) -> dict:
    out = task_dir / "f.json"
    assert main(["adapt", "--learner-file", str(file), "--support", str(task_dir / "support"), "--query",
                 str(task_dir / "query"), "--device", "cpu", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shots", [1, 5])
def test_the_file_adapts_as_the_run_does_without_the_run(one_pick_run, tmp_path, shots):
    run_dir, _ = one_pick_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    file = tmp_path / "out" / "learner.safetensors"
    got = _export(copy, file)
    shutil.rmtree(copy)  # the file alone must do
    selected = read_selected(run_dir / "best_learner.pt")
    assert {s.iteration for s in selected.values()} == {got["card"]["iteration"]}  # one pick for both in this run
    space = json.loads((run_dir / INPUT_SPACE).read_text())
    card = got["card"]
    assert (card["image_size"], card["mean"], card["std"]) == (space["image_size"], space["mean"], space["std"])
    assert (card["steps"], card["lr"], card["queries"], card["ways"], card["shots"]) == (10, 0.01, 15, 5, [1, 5])
    assert card["meta_val"] == {str(k): v.val for k, v in selected.items()}
    assert card["source"] == "copy" and card["data"] == ["builtin"]  # the run's name, not a local path
    state, _ = read_learner_file(file)
    assert _equal_states(state, selected[1].learner)
    task = tmp_path / "task"
    _write_task(run_dir, task, shots)
    by_file = _adapt_file(task, file, "--dtype", "float64", "--compare-random")
    by_run = _adapt(task, run_dir, "--dtype", "float64", "--compare-random")
    assert by_file["predictions"] == by_run["predictions"] and by_file["random"] == by_run["random"]
    assert by_file["learner"] == f"FREE (selected on meta-val for 1- and 5-shot tasks, iteration {card['iteration']})"
    assert by_file["learner_file"] == str(file) and by_file["run"] is None and by_file["card"] == card
    fewer = ("--dtype", "float64", "--steps", "2", "--lr", "0.05")
    assert _adapt_file(task, file, *fewer)["predictions"] == _adapt(task, run_dir, *fewer)["predictions"]


def test_per_shot_picks_and_the_last_learner(run, tmp_path, capsys):
    run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    saved = torch.load(copy / "best_learner.pt", weights_only=True)
    five = {k: v + 0.05 * torch.randn_like(v) for k, v in saved["shots"]["1"]["learner"].items()}
    saved["shots"]["5"] = {"iteration": saved["shots"]["1"]["iteration"] + 10, "val": 50.0, "learner": five}
    torch.save(saved, copy / "best_learner.pt")
    assert main(["export", "--run", str(copy), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "a different learner per shot count" in err and "--shots 1 or --shots 5" in err
    assert not (tmp_path / "x.safetensors").exists()
    got = _export(copy, tmp_path / "five.safetensors", "--shots", "5")
    assert got["card"]["shots"] == [5] and got["card"]["meta_val"] == {"5": 50.0}
    task = tmp_path / "task"
    _write_task(copy, task, 5)  # a 5-shot task: `adapt --run` takes the 5-shot pick, as the 5-shot file holds
    by_file = _adapt_file(task, tmp_path / "five.safetensors", "--dtype", "float64")
    assert by_file["predictions"] == _adapt(task, copy, "--dtype", "float64")["predictions"]
    assert "note: this learner was selected" not in capsys.readouterr().err
    module, card = load_learner(tmp_path / "five.safetensors", dtype=torch.float64)
    assert _equal_states({k: v.float() for k, v in module.state_dict().items()}, five)
    assert card.label().startswith("FREE (selected on meta-val for 5-shot tasks")
    one = _export(copy, tmp_path / "one.safetensors", "--shots", "1")
    assert one["card"]["shots"] == [1] and one["card"]["iteration"] == saved["shots"]["1"]["iteration"]
    capsys.readouterr()
    _adapt_file(task, tmp_path / "one.safetensors")  # the 1-shot pick on a 5-shot task: said
    assert "selected on meta-val for 1-shot tasks and the support has 5 image(s) per class" in capsys.readouterr().err
    assert main(["export", "--run", str(copy), "--out", str(tmp_path / "y.safetensors"), "--shots", "3"]) == 2
    assert "not 3-shot: export with --shots 1 or --shots 5" in capsys.readouterr().err
    last = _export(copy, tmp_path / "last.safetensors", "--learner", "last")
    state, _ = read_learner_file(tmp_path / "last.safetensors")
    expected, iteration = last_learner(copy, CPU)
    assert _equal_states(state, expected) and last["card"]["iteration"] == iteration
    assert last["card"]["shots"] is None and last["label"] == f"FREE (last, iteration {iteration})"
    assert main(["export", "--run", str(copy), "--out", str(tmp_path / "z.safetensors"), "--learner", "last",
                 "--shots", "1"]) == 2
    assert "drop --shots" in capsys.readouterr().err


def test_a_run_from_before_per_shot_selection(run, tmp_path, capsys):
    """A legacy best_learner.pt ({"iteration", "val", "learner"}: one pick for every shot count)."""
    run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    saved = torch.load(copy / "best_learner.pt", weights_only=True)["shots"]["1"]
    torch.save({"iteration": saved["iteration"], "val": 33.0, "learner": saved["learner"]}, copy / "best_learner.pt")
    got = _export(copy, tmp_path / "l.safetensors", "--shots", "5")
    assert "one learner for every shot count" in capsys.readouterr().err
    assert got["card"]["shots"] is None and got["card"]["meta_val"] == {"all shot counts (their mean)": 33.0}
    assert got["label"] == f"FREE (selected on meta-val, iteration {saved['iteration']})"
    state, _ = read_learner_file(tmp_path / "l.safetensors")
    assert _equal_states(state, saved["learner"])


def test_refusals_name_the_fix(one_pick_run, tmp_path, capsys):
    run_dir, _ = one_pick_run
    file = tmp_path / "l.safetensors"
    _export(run_dir, file)
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "l.pt")]) == 2
    assert "with the .safetensors suffix" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path), "--out", str(file)]) == 2
    assert "no config.json in" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    (bare / "best_learner.pt").unlink()
    assert main(["export", "--run", str(bare), "--out", str(tmp_path / "b.safetensors")]) == 2
    assert "--learner last" in capsys.readouterr().err
    _write_task(run_dir, tmp_path, 1)
    args = ["adapt", "--support", str(tmp_path / "support"), "--query", str(tmp_path / "query"), "--device", "cpu"]
    assert main([*args, "--learner-file", str(file), "--learner", "last"]) == 2
    assert "a learner file holds one" in capsys.readouterr().err
    assert main([*args, "--learner-file", str(tmp_path / "none.safetensors")]) == 2
    assert "fastfree export --run RUN_DIR --out" in capsys.readouterr().err
    # the learner's source is refused before any image is read: here the support folder does not exist either
    missing = ["adapt", "--support", str(tmp_path / "nothing"), "--query", str(tmp_path / "query"), "--device", "cpu"]
    assert main([*missing, "--learner-file", str(tmp_path / "none.safetensors")]) == 2
    assert "no learner file at" in capsys.readouterr().err
    assert main([*missing, "--run", str(tmp_path / "norun")]) == 2
    assert "no config.json in" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused as the flag is read
        main([*missing, "--learner-file", str(file), "--lr", "0"])
    assert "--lr: must be a finite number > 0, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source of the learner, not two
        main([*args, "--learner-file", str(file), "--run", str(run_dir)])
    with pytest.raises(SystemExit):
        main(args)


def test_eval_meta_tests_the_file_as_the_run(one_pick_run, tmp_path, capsys):
    """`eval --learner-file` on the run's data gives `eval --run`'s task accuracies, task for task."""
    run_dir, _ = one_pick_run
    file = tmp_path / "l.safetensors"
    _export(run_dir, file)
    common = ["eval", "--method", "learner", "--tasks", "4", "--device", "cpu", "--dtype", "float64", "--per-task"]
    assert main([*common, "--run", str(run_dir), "--json", str(tmp_path / "r.json")]) == 0
    assert main([*common, "--learner-file", str(file), *SMALL, "--json", str(tmp_path / "f.json")]) == 0
    by_run, by_file = (json.loads((tmp_path / n).read_text()) for n in ("r.json", "f.json"))
    assert by_file["per_task_accuracy"] == by_run["per_task_accuracy"] and by_file["results"] == by_run["results"]
    assert by_file["learner"].startswith("FREE (selected on meta-val for 1- and 5-shot tasks")
    assert "cross-domain" not in capsys.readouterr().out
    state, card = read_learner_file(file)
    write_learner_file(tmp_path / "other.safetensors", state, replace(card, data=("cifar-fs",)))
    assert main([*common, "--learner-file", str(tmp_path / "other.safetensors"), *SMALL, "--json",
                 str(tmp_path / "o.json")]) == 0
    assert "learned from cifar-fs; these tasks are builtin's (a cross-domain test)" in capsys.readouterr().out
    for extra, message in ((["--method", "random"], "--learner-file goes with --method learner"),
                           (["--learner", "last"], "a learner file holds one")):
        args = [*common, "--learner-file", str(file), *extra]
        assert main(args) == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--learner-file", str(file), "--run", str(run_dir)])
