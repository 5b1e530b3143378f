"""`fastfree eval --run`: a train run's meta-learner (or a Random learner of its shape) meta-tested
again reproduces what the run reported on the same tasks; misuse names the fix."""

import json
import shutil

import pytest
import torch

from fastfree.cli import main
from fastfree.errors import FastFreeError
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL


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


def test_every_kept_learner_on_the_same_tasks(run, tmp_path, capsys):
    """The run keeps its learner at each meta-val evaluation (iterations 2 and 3); meta-testing them
    all reproduces the run's own meta-test of the selected and the last learner."""
    run_dir, reported = run
    kept = sorted(p.name for p in (run_dir / "learners").iterdir())
    assert kept == ["iter_00002.pt", "iter_00003.pt"]
    # a metrics line's "iteration" is its 0-based index: the learner kept after it is iteration + 1
    logged = {m["iteration"] + 1: m["val"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "val" in m}
    got = _eval(tmp_path, run_dir, "--method", "learner", "--learner", "every")
    assert [r["iteration"] for r in got["evaluations"]] == [2, 3]
    assert {r["iteration"]: r["logged_val"] for r in got["evaluations"]} == logged
    selected = next(k for k in reported if k.startswith("FREE (selected"))
    rows = {r["iteration"]: r["test"] for r in got["evaluations"]}
    for shots, s in got["summary"].items():
        assert s["evaluations"] == 2 and s["last_evaluated"]["iteration"] == 3
        assert s["last_evaluated"]["mean"] == pytest.approx(reported["FREE (last)"][shots]["mean"])
        assert s["selected_on_val"]["mean"] == pytest.approx(reported[selected][shots]["mean"])
        assert s["best_on_test"]["mean"] == max(r[shots][0] for r in rows.values())
        assert s["best_minus_last"]["tasks"] == 3
    out = capsys.readouterr().out
    assert "the published code's selection, optimistic" in out and "task by task" in out
    assert got["evaluations_without_learner"] == [] and got["per_task_accuracy"] is None
    every = _eval(tmp_path, run_dir, "--method", "learner", "--learner", "every", "--per-task")
    per_task = every["per_task_accuracy"]
    assert sorted(per_task) == ["2", "3"] and all(len(a) == 3 for acc in per_task.values() for a in acc.values())
    for shots, s in every["summary"].items():  # the pair's spread is over the tasks' differences, task by task
        best = per_task[str(s["best_on_test"]["iteration"])][shots]
        diffs = [b - a for b, a in zip(best, per_task["3"][shots])]
        mean = sum(diffs) / 3
        spread = 1.96 * (sum((d - mean) ** 2 for d in diffs) / 3) ** 0.5 / 3 ** 0.5
        assert (s["best_minus_last"]["mean"], s["best_minus_last"]["ci95"]) == (pytest.approx(mean), pytest.approx(spread))
    assert {s: sum(a) / 3 for s, a in per_task["3"].items()} == pytest.approx(
        {s: v["mean"] for s, v in reported["FREE (last)"].items()})
    # a run resumed from before learners were kept lacks some: the report says which
    (run_dir / "learners" / "iter_00002.pt").rename(tmp_path / "kept2.pt")
    try:
        part = _eval(tmp_path, run_dir, "--method", "learner", "--learner", "every")
    finally:
        (tmp_path / "kept2.pt").rename(run_dir / "learners" / "iter_00002.pt")
    assert part["evaluations_without_learner"] == [2] and [r["iteration"] for r in part["evaluations"]] == [3]
    assert "1 meta-val evaluations have no kept learner (iterations 2)" in capsys.readouterr().out


def test_every_learner_on_meta_val_reproduces_the_runs_meta_val_task_by_task(run, tmp_path):
    """`--split val` with the run's --val-tasks meets the tasks the run's meta-val met: the same
    accuracies, task by task, as metrics.jsonl stored (compare_runs pairs old runs' meta-val so)."""
    run_dir, _ = run
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stored = {m["iteration"] + 1: m["val_per_task"] for m in lines if "val" in m}
    assert sorted(stored) == [2, 3] and all(m["val_protocol"]["tasks"] == 2 for m in lines if "val" in m)
    every = _eval(tmp_path, run_dir, "--method", "learner", "--learner", "every", "--split", "val", "--tasks", "2",
                  "--per-task")
    assert {int(it): acc for it, acc in every["per_task_accuracy"].items()} == stored
    for row in every["evaluations"]:
        assert row["val"] == row["logged_val"]  # measured again == logged by the run


def test_every_learner_refusals(run, tmp_path, capsys):
    run_dir, _ = run
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((run_dir / "config.json").read_text())
    for extra, message in ((["--run", str(bare)], "holds no meta-learners"),
                           (["--run", str(run_dir), "--data", "builtin"], "drop --data")):
        assert main(["eval", "--device", "cpu", "--method", "learner", "--learner", "every", *extra]) == 2, message
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """A run on a 3-way pool: (run directory, its reported results)."""
    root = tmp_path_factory.mktemp("run3")
    assert main(["pretrain", "--teachers", "2", "--ways", "3", "--epochs", "1", "--batch-size", "32", "--out",
                 str(root / "pool"), "--device", "cpu", *SMALL]) == 0
    out = root / "t.json"
    assert main(["train", "--pool", str(root / "pool"), "--run-dir", str(root / "run"), "--json", str(out), *TRAIN,
                 *SMALL]) == 0
    return root / "run", json.loads(out.read_text())["results"]


def test_eval_of_a_run_is_its_own_n_way(run3, tmp_path):
    """train meta-tests at the pool's N; eval --run took the preset's 5-way: Random silently on other tasks,
    the learners refused until --ways. Runs from before input_space.json recorded N read it from a learner."""
    run_dir, reported = run3
    selected = next(k for k in reported if k.startswith("FREE (selected"))
    older = tmp_path / "older"
    shutil.copytree(run_dir, older)
    space = older / "input_space.json"
    space.write_text(json.dumps({k: v for k, v in json.loads(space.read_text()).items() if k != "ways"}))
    for where in (run_dir, older):
        for extra, name in ((["--method", "random"], "Random"), (["--method", "learner"], selected)):
            got = _eval(tmp_path, where, *extra)
            assert got["config"]["ways"] == 3 and _table(got) == {s: v["mean"] for s, v in reported[name].items()}
    every = _eval(tmp_path, run_dir, "--method", "learner", "--learner", "every")
    assert every["config"]["ways"] == 3
    file = tmp_path / "l3.safetensors"
    # --shots 1: meta-val may pick the 1- and 5-shot learners at different iterations (export then asks which)
    assert main(["export", "--run", str(run_dir), "--shots", "1", "--out", str(file)]) == 0
    out = tmp_path / "f.json"  # an exported learner is tested at its own N too, without --ways
    assert main(["eval", "--method", "learner", "--learner-file", str(file), "--tasks", "3", "--device", "cpu",
                 "--json", str(out), *SMALL]) == 0
    assert json.loads(out.read_text())["config"]["ways"] == 3


def test_flags_eval_would_ignore_are_refused(run, tmp_path, capsys):
    """With --run the data, pool and architecture flags selected nothing (the run's own numbers came out)."""
    run_dir, _ = run
    base = ["eval", "--run", str(run_dir), "--tasks", "3", "--device", "cpu"]
    for extra, message in (
            (["--method", "learner", "--image-size", "40"], "--image-size would be ignored here: --run tests on the "
                                                            "run's own data"),
            (["--method", "learner", "--data-root", str(tmp_path)], "the built-in data set, which has no folder"),
            (["--method", "random", "--arch", "resnet10"], "--arch would be ignored here"),
            (["--method", "learner", "--pool", str(tmp_path)], "--pool would be ignored here"),
            (["--method", "learner", "--per-task"], "add --json FILE")):
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert main(["eval", "--method", "average", "--width", "8", "--pool", str(tmp_path)]) == 2
    assert "average starts from the pool's models" in capsys.readouterr().err
    # Random and a learner file start from no pool: a --pool given with them would be read as having acted
    assert main(["eval", "--method", "random", "--pool", str(tmp_path)]) == 2
    assert "--pool would be ignored here: random does not start from a pool's models" in capsys.readouterr().err
    assert main(["eval", "--method", "learner", "--learner-file", str(tmp_path / "l.safetensors"),
                 "--pool", str(tmp_path)]) == 2
    assert "--pool would be ignored here: learner does not" in capsys.readouterr().err


def test_a_runs_data_is_named_absolute_and_can_be_found_where_it_moved(tmp_path, monkeypatch):
    """`train --data-root cf` recorded 'cf', found only from the folder it ran in; and data that moved
    could not be named (--data-root was ignored with --run)."""
    import fastfree.commands.run_learner as run_learner
    from fastfree.commands.train import absolute_root

    monkeypatch.chdir(tmp_path)
    assert absolute_root({"source": "cifar-fs", "root": "cf"})["root"] == str(tmp_path / "cf")
    assert absolute_root({"source": "builtin", "root": None}) == {"source": "builtin", "root": None}
    loaded = []

    def load_on_device(cfg, device):  # records what would be loaded
        loaded.append(cfg)
        return None, 0.0

    monkeypatch.setattr(run_learner, "load_on_device", load_on_device)
    config = {"data": {"source": "cifar-fs", "root": "/old/place"}}
    run_learner.run_data(config, "cpu", "/new/place")
    assert loaded[-1].root == "/new/place" and config["data"]["root"] == "/old/place"


def test_every_learner_continues_after_an_interrupt(run, tmp_path, monkeypatch, capsys):
    """`--learner every` on CIFAR-FS meta-tests ~48 learners (hours on a CPU): an interrupt lost them
    all. Each finished learner is kept in RUN/metatests; the same command continues, with the same result."""
    import fastfree.commands.every_learner as every_learner

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("metatests"))  # other tests' progress
    args = ["--method", "learner", "--learner", "every", "--per-task"]
    whole = _eval(tmp_path, run_dir, *args)
    assert whole["learners_tested_before"] == []
    shutil.rmtree(run_dir / "metatests")
    tested, real = [], every_learner.metatest_data

    def interrupted_on_the_second(*a, **k):
        if tested:
            raise KeyboardInterrupt
        tested.append(1)
        return real(*a, **k)

    monkeypatch.setattr(every_learner, "metatest_data", interrupted_on_the_second)
    base = ["eval", "--run", str(run_dir), "--tasks", "3", "--device", "cpu", "--json", str(tmp_path / "x.json")]
    assert main([*base, *args]) == 130
    assert "it continues from the learners it could keep in" in capsys.readouterr().err
    monkeypatch.setattr(every_learner, "metatest_data", real)
    again = _eval(tmp_path, run_dir, *args)
    assert "continuing: 1 of the 2 learners were meta-tested on these tasks before" in capsys.readouterr().out
    assert again["learners_tested_before"] == [2]
    for key in ("evaluations", "summary", "per_task_accuracy"):
        assert again[key] == whole[key], key
    # a line torn by a kill is ignored (that learner runs again), and later lines still land whole
    (progress,) = (run_dir / "metatests").iterdir()
    lines = progress.read_text().splitlines()
    assert len(lines) == 3 and "protocol" in json.loads(lines[0])
    progress.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    assert _eval(tmp_path, run_dir, *args)["learners_tested_before"] == [2]
    assert all(json.loads(x) for x in [progress.read_text().splitlines()[i] for i in (0, 1, 3)])
    assert _eval(tmp_path, run_dir, *args)["learners_tested_before"] == [2, 3]
    # another protocol (here the task count) or another learner at the same iteration is tested afresh
    assert _eval(tmp_path, run_dir, "--method", "learner", "--learner", "every", "--tasks", "2")[
        "learners_tested_before"] == []
    kept = run_dir / "learners" / "iter_00003.pt"
    d = torch.load(kept, weights_only=True)
    d["learner"]["classifier.bias"] = d["learner"]["classifier.bias"] + 1.0
    torch.save(d, kept)
    assert _eval(tmp_path, run_dir, *args)["learners_tested_before"] == [2]


def test_every_learner_without_a_writable_run_directory_still_reports(run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("metatests"))
    (run_dir / "metatests").write_text("not a folder")  # stands in for a read-only run directory (tests run as root)
    got = _eval(tmp_path, run_dir, "--method", "learner", "--learner", "every")
    assert got["progress_file"] is None and [r["iteration"] for r in got["evaluations"]] == [2, 3]
    assert capsys.readouterr().out.count("cannot keep eval's progress in the run directory") == 1


def test_a_runs_folder_data_can_be_read_with_another_decoder(tmp_path, monkeypatch, run, capsys):
    """A run trained with --decoder dali (on a GPU) could not be evaluated where DALI is not installed:
    with --run, --decoder was ignored. It now says how to read the run's image folders here."""
    import fastfree.commands.run_learner as run_learner

    loaded = []
    monkeypatch.setattr(run_learner, "load_on_device", lambda cfg, device: (loaded.append(cfg), 0.0))
    monkeypatch.setattr(run_learner, "load_domains", lambda cfgs, device: loaded.extend(cfgs))
    folder = {"source": "folder", "root": "/data/imgs", "decoder": "dali"}
    run_learner.run_data({"data": folder}, "cpu", None, "pil")
    assert loaded[-1].decoder == "pil" and loaded[-1].root == "/data/imgs" and folder["decoder"] == "dali"
    run_learner.run_data({"domains": [folder, {"source": "cifar-fs", "root": "/c"}]}, "cpu", None, "pil")
    assert [c.decoder for c in loaded[-2:]] == ["pil", "auto"]  # the folder domain's only
    run_learner.run_data({"data": {"source": "mini-imagenet", "root": "/m", "decoder": "dali"}}, "cpu", None, "pil")
    assert loaded[-1].decoder == "pil"  # the named image folders too: the 84 px sets DALI is for
    with pytest.raises(FastFreeError, match="has none: drop --decoder"):
        run_learner.run_data({"data": {"source": "cifar-fs", "root": "/c"}}, "cpu", None, "pil")
    monkeypatch.undo()
    assert main(["eval", "--run", str(run[0]), "--method", "learner", "--decoder", "pil", "--device", "cpu"]) == 2
    assert "this run's data (builtin) has none: drop --decoder" in capsys.readouterr().err


def test_testing_a_run_on_another_data_set_does_not_load_the_runs_own(run, tmp_path, monkeypatch):
    """`eval --run RUN --data X` loaded the run's data first (and failed where it had moved or been deleted)
    although only its input space, recorded in input_space.json, is used."""
    import fastfree.commands.run_learner as run_learner

    def gone(*a, **k):
        raise AssertionError("the run's own data was loaded")

    monkeypatch.setattr(run_learner, "run_data", gone)
    got = _eval(tmp_path, run[0], "--method", "learner", "--data", "builtin")
    assert got["dataset"] == "builtin" and len(got["results"]) == 2


def test_every_learners_kept_results_are_keyed_by_what_decides_them():
    """Reused only where they would come out the same: the data as decoded here (its digest: the same
    data moved is the same) and what changes the rounding (threads, chunk, engine, ...)."""
    from types import SimpleNamespace

    from fastfree.commands.every_learner import results_key
    from fastfree.data.procedural import build_procedural
    from fastfree.metatest.protocol import MetaTestConfig

    args = SimpleNamespace(split="test", dtype="float32")
    cpu, data = torch.device("cpu"), build_procedural(0, 25, 32)
    key = results_key(data, args, MetaTestConfig(tasks=3), "batched", cpu)
    assert key == results_key(build_procedural(0, 25, 32), args, MetaTestConfig(tasks=3), "batched", cpu)
    assert key["threads"] == torch.get_num_threads() and key["chunk"] == 50 and key["torch"] == torch.__version__
    variants = [
        results_key(build_procedural(1, 25, 32), args, MetaTestConfig(tasks=3), "batched", cpu),
        results_key(data, SimpleNamespace(split="val", dtype="float32"), MetaTestConfig(tasks=3), "batched", cpu),
        results_key(data, args, MetaTestConfig(tasks=3, chunk=7), "batched", cpu),
        results_key(data, args, MetaTestConfig(tasks=3, seed=1), "batched", cpu),
        results_key(data, args, MetaTestConfig(tasks=3), "reference", cpu),
    ]
    assert all(v != key for v in variants)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert results_key(data, args, MetaTestConfig(tasks=3), "batched", cpu) != key
    finally:
        torch.set_num_threads(threads)
