"""The command line end to end on small settings, and its clear errors."""

import argparse
import importlib
import json

import pytest
import torch

from fastfree.cli import COMMAND_MODULES, build_parser, main

SMALL = ["--images-per-class", "25"]


def test_every_subcommand_has_a_module_with_run():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMAND_MODULES)
    for command, module in COMMAND_MODULES.items():
        assert callable(importlib.import_module(module).run), command


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "demo"
    report = out.parent / "pretrain.json"
    assert main(["pretrain", "--teachers", "3", "--epochs", "2", "--batch-size", "32", "--out", str(out),
                 "--json", str(report), "--device", "cpu", *SMALL]) == 0
    return out


def test_pretrain_writes_pool_and_report(pool_dir):
    report = json.loads((pool_dir.parent / "pretrain.json").read_text())
    assert report["teachers"] == 3 and len(report["heldout_accuracy"]["per_teacher"]) == 3
    # auto on a CPU: teachers side by side in threads, one at a time where torch has one thread
    assert report["engine"] == ("threads" if torch.get_num_threads() > 1 else "reference")
    assert report["torch"] == torch.__version__ and report["device"] == "cpu"
    assert (pool_dir / "manifest.json").is_file() and (pool_dir / "weights.safetensors").is_file()


@pytest.mark.parametrize("method", ["random", "average", "best-model"])
def test_eval_methods_write_results(pool_dir, tmp_path, method):
    out = tmp_path / "r.json"
    pool = [] if method == "random" else ["--pool", str(pool_dir)]  # Random reads no pool, and refuses one
    assert main(["eval", "--method", method, *pool, "--tasks", "4", "--steps", "2",
                 "--json", str(out), "--device", "cpu", *SMALL]) == 0
    r = json.loads(out.read_text())
    assert [x["shots"] for x in r["results"]] == [1, 5]
    for x in r["results"]:
        assert 0 <= x["mean"] <= 100 and x["ci95"] >= 0 and x["tasks"] == 4
    assert r["method"] == method and r["dataset"] == "builtin" and r["device_name"]


def test_same_seed_same_tasks_across_engines(tmp_path):
    results = []
    for engine in ("batched", "reference"):
        out = tmp_path / f"{engine}.json"
        assert main(["eval", "--method", "random", "--tasks", "3", "--shots", "1", "--steps", "1",
                     "--engine", engine, "--dtype", "float64", "--per-task", "--json", str(out), *SMALL]) == 0
        results.append(json.loads(out.read_text())["per_task_accuracy"])
    assert results[0] == results[1]


def test_clear_errors(tmp_path, capsys):
    assert main(["eval", "--method", "average", "--pool", str(tmp_path / "missing"), *SMALL]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["eval", "--method", "random", "--data", "cifar-fs", "--tasks", "1"]) == 2
    assert "needs --data-root" in capsys.readouterr().err
    assert main(["eval", "--method", "random", "--data", "cifar-fs", "--data-root", str(tmp_path)]) == 2
    assert "CIFAR_FS_train.pickle" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["eval", "--method", "random", "--device", "cuda", *SMALL]) == 2
        assert "sees no GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--method", "oracle"])
    with pytest.raises(SystemExit):  # `profile` needs a sub-command (table1)
        main(["profile"])
    # learning rates and step counts are checked as they are read: float() alone takes nan and inf,
    # which adapted every task into NaNs and reported class 0 for every image
    for argv, message in ((["eval", "--lr", "nan"], "must be a finite number > 0, got nan"),
                          (["adapt", "--lr", "inf"], "must be a finite number > 0, got inf"),
                          (["pretrain", "--lr", "0"], "must be a finite number > 0, got 0"),
                          (["pretrain", "--lr-gamma", "-0.2"], "must be a finite number > 0"),
                          (["profile", "run", "--peak-tflops", "x"], "'x' is not a number"),
                          (["eval", "--steps", "-1"], "must be an integer >= 0, got -1"),
                          (["adapt", "--steps", "1.5"], "'1.5' is not an integer"),
                          (["eval", "--seed", "-1"], "must be an integer >= 0, got -1"),
                          (["pretrain", "--seed", "-3"], "must be an integer >= 0, got -3"),
                          (["train", "--k", "-1"], "argument --k: must be an integer >= 0, got -1"),
                          (["train", "--warmup", "-2"], "argument --warmup: must be an integer >= 0, got -2")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err, argv


def test_output_files_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """A --json or --out naming a folder (or under a file) failed only at the end, after all the work,
    with a traceback, leaving NAME.tmp behind (for `eval --learner every`, hours of results)."""
    import fastfree.commands.evaluate as evaluate

    def no_work(args):
        raise AssertionError("the command ran")

    monkeypatch.setattr(evaluate, "run", no_work)
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    for argv, message in (
            (["eval", "--method", "random", "--json", str(tmp_path / "folder")], "is a directory: give the file"),
            (["eval", "--method", "random", "--json", str(tmp_path / "afile" / "r.json")], "afile is a file, not a"),
            (["adapt", "--run", "r", "--support", "s", "--query", "q", "--out", str(tmp_path / "folder")],
             "--out"),
            (["export", "--run", "r", "--out", str(tmp_path / "afile" / "x.safetensors")], "is a file, not a folder"),
            (["adapt", "--run", "r", "--support", "s", "--query", "q", "--out", str(tmp_path / "p.csv"), "--json",
              str(tmp_path / "p.csv")], "two outputs name one file")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]


def test_output_folders_and_unwritable_places_are_refused_first(tmp_path, capsys, monkeypatch):
    """Folder outputs (pretrain/import-pool --out, train --run-dir) and profile's --trace are checked like
    the files; a place this user cannot write is refused before the work (eval's results were lost)."""
    import os

    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    for argv, message in ((["pretrain", "--out", str(tmp_path / "afile")], "is a file: give a folder"),
                          (["train", "--run-dir", str(tmp_path / "afile" / "run")], "is a file, not a folder"),
                          (["import-pool", str(tmp_path), "--out", str(tmp_path / "afile")], "is a file: give a"),
                          (["profile", "run", "--trace", str(tmp_path / "folder")], "is a directory")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "folder") else real(p, mode))
    assert main(["eval", "--method", "random", "--json", str(tmp_path / "folder" / "r.json")]) == 2
    assert "folder is not writable for this user" in capsys.readouterr().err


def test_a_folder_of_somebody_elses_files_is_refused_as_output(tmp_path, capsys, monkeypatch):
    """`pretrain --out ~/pools` wrote the pool among the other pools' folders; `train --run-dir .` its run
    among a project's files. A folder of fastfree's own (a pool, a run, an interrupted one) is taken."""
    import fastfree.commands.pretrain as pretrain
    import fastfree.commands.train as train_command

    ran = []
    monkeypatch.setattr(pretrain, "run", lambda args: ran.append(args.out))
    monkeypatch.setattr(train_command, "run", lambda args: ran.append(args.run_dir))
    theirs = tmp_path / "pools"
    (theirs / "pool-cifar").mkdir(parents=True)  # a user's own naming, not a run's pool-0-cifar-fs
    for name in ("cifar", "mini", "notes.txt", "zzz"):
        (theirs / name).mkdir(parents=True) if "." not in name else (theirs / name).write_text("x")
    for argv in (["pretrain", "--out", str(theirs)], ["import-pool", str(tmp_path), "--out", str(theirs)],
                 ["train", "--run-dir", str(theirs)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "already holds other files (cifar, mini, notes.txt and 2 more) and nothing of fastfree's" in err, argv
        assert str(theirs / "NAME") in err
    hidden = tmp_path / "hidden"
    (hidden / ".git").mkdir(parents=True)
    own = tmp_path / "own"
    (own / ".progress").mkdir(parents=True)
    (own / "other.txt").write_text("x")
    run = tmp_path / "run"
    (run / "pool").mkdir(parents=True)  # a train run interrupted while pretraining its own pool
    domains = tmp_path / "domains"
    (domains / "pool-0-builtin" / ".progress").mkdir(parents=True)  # a multi-domain run interrupted likewise
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "manifest.json.tmp").write_text("{")  # an import-pool killed before its rename
    import fastfree.commands.import_pool as import_pool

    monkeypatch.setattr(import_pool, "run", lambda args: ran.append(args.out))
    for argv in (["pretrain", "--out", str(hidden)], ["pretrain", "--out", str(own)], ["train", "--run-dir", str(run)],
                 ["pretrain", "--out", str(tmp_path / "new")], ["train", "--run-dir", str(domains)],
                 ["import-pool", str(tmp_path), "--out", str(killed)]):
        assert main(argv) == 0, argv
    assert len(ran) == 6
    # another command's folder is named as what it is
    (run / "config.json").write_text("{}")
    (killed / "manifest.json").write_text("{}")
    for argv, message in ((["pretrain", "--out", str(run)], "holds a run (fastfree train), not what this command"),
                          (["train", "--run-dir", str(killed)], "holds a pool, not what this command writes"),
                          (["import-pool", str(tmp_path), "--out", str(own)], "holds an interrupted pretraining")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_the_own_entries_are_the_modules_names():
    from fastfree.cli import OWN_ENTRIES
    from fastfree.commands.run_learner import INPUT_SPACE
    from fastfree.commands.train import POOL_RECORD
    from fastfree.free.kept import LEARNERS
    from fastfree.free.run import CHECKPOINT, METRICS
    from fastfree.free.selection import BEST
    from fastfree.pool.progress import PROGRESS
    from fastfree.pool.store import MANIFEST, WEIGHTS

    pool_files = (MANIFEST, WEIGHTS, MANIFEST + ".tmp", WEIGHTS + ".tmp")  # store.save_pool's temporary names
    assert OWN_ENTRIES["pretrain"] == (*pool_files[:2], PROGRESS, *pool_files[2:])
    assert OWN_ENTRIES["import-pool"] == pool_files
    assert set(OWN_ENTRIES["train"]) == {"config.json", CHECKPOINT, METRICS, "pool", POOL_RECORD, INPUT_SPACE,
                                         LEARNERS, BEST, "results.json"}


def test_errors_about_a_path_and_interrupts_are_one_line(tmp_path, capsys, monkeypatch):
    import fastfree.commands.evaluate as evaluate

    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.tmp"))

    monkeypatch.setattr(evaluate, "run", denied)
    assert main(["eval", "--method", "random"]) == 2
    assert "fastfree eval: error: Permission denied (" in capsys.readouterr().err

    def interrupted(args):
        raise KeyboardInterrupt

    import fastfree.commands.train as train_command

    monkeypatch.setattr(train_command, "run", interrupted)
    assert main(["train", "--run-dir", str(tmp_path / "r")]) == 130
    assert "interrupted; it had no checkpoint yet: run the same command again" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "--run-dir", str(tmp_path / "r")]) == 130
    assert "--resume to continue from its last checkpoint" in capsys.readouterr().err
    import fastfree.commands.pretrain as pretrain_command

    monkeypatch.setattr(pretrain_command, "run", interrupted)
    assert main(["pretrain", "--out", str(tmp_path / "p")]) == 130  # before any teacher finished
    assert "no teacher had finished: run the same command again" in capsys.readouterr().err
    (tmp_path / "p" / ".progress").mkdir(parents=True)
    assert main(["pretrain", "--out", str(tmp_path / "p")]) == 130
    assert "with --resume to keep the teachers it finished" in capsys.readouterr().err


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    from fastfree.free.atomic import atomic_torch_save, atomic_write_text

    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "taken", "text")
    with pytest.raises(OSError):
        atomic_torch_save({"a": 1}, tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_pool_from_another_dataset_is_refused(pool_dir, cifar_fs_root, capsys):
    assert main(["eval", "--method", "average", "--pool", str(pool_dir), "--data", "cifar-fs",
                 "--data-root", str(cifar_fs_root), "--tasks", "1"]) == 2
    assert "trained on 'builtin'" in capsys.readouterr().err


def test_random_on_real_cifar_fs(cifar_fs_root, tmp_path):
    """The whole eval path on the real images (few tasks: this checks plumbing, not accuracy)."""
    out = tmp_path / "r.json"
    assert main(["eval", "--preset", "cifar-fs", "--data-root", str(cifar_fs_root), "--method", "random",
                 "--tasks", "10", "--json", str(out), "--device", "cpu"]) == 0
    r = json.loads(out.read_text())
    assert r["dataset"] == "cifar-fs" and all(x["tasks"] == 10 for x in r["results"])


TINY_FREE = ["--iterations", "3", "--warmup", "1", "--eval-every", "2", "--val-tasks", "2", "--test-tasks", "3",
             "--teachers-per-iteration", "2", "--device", "cpu"]


def test_train_end_to_end_and_resume(pool_dir, tmp_path):
    run_dir = tmp_path / "run"
    out = tmp_path / "t.json"
    assert main(["train", "--pool", str(pool_dir), "--run-dir", str(run_dir), "--json", str(out), *TINY_FREE, *SMALL]) == 0
    r = json.loads(out.read_text())
    assert set(r["results"]) >= {"FREE (last)", "Random"} and r["iterations"] == 3
    assert r["data_recovery_seconds"] > 0 and r["config"]["engine"]["engine"] == "fast"
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "results.md", "results.json"):
        assert (run_dir / name).is_file(), name
    assert "| Random |" in (run_dir / "results.md").read_text()
    # a finished run resumes to the same end without redoing work (a rerun would rewrite the metrics'
    # timings); other flags are refused
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    assert main(["train", "--pool", str(pool_dir), "--run-dir", str(run_dir), "--resume", *TINY_FREE, *SMALL]) == 0
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics and len(metrics.splitlines()) == 3
    # a run started before FIVE's teacher mapping had its own switch (no five_vmap recorded), before
    # the generator's upsampling was fused (no fuse_upsample), or before BELL's augmentation or the
    # generator's optimiser were options (no bell.augment, generator_optimizer), still resumes
    config = json.loads((run_dir / "config.json").read_text())
    del config["engine"]["five_vmap"], config["engine"]["fuse_upsample"], config["free"]["bell"]["augment"]
    del config["free"]["generator_optimizer"]
    (run_dir / "config.json").write_text(json.dumps(config))
    assert main(["train", "--pool", str(pool_dir), "--run-dir", str(run_dir), "--resume", *TINY_FREE, *SMALL]) == 0


def test_train_resume_lengthens_a_finished_run_and_keeps_its_old_results(pool_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train = ["train", "--pool", str(pool_dir), "--run-dir", str(run_dir), *TINY_FREE, *SMALL]
    assert main(train) == 0
    first = json.loads((run_dir / "results.json").read_text())
    capsys.readouterr()
    assert main([*train, "--resume", "--iterations", "4"]) == 0  # the later --iterations wins
    assert "FREE:  75%" in capsys.readouterr().err  # the bar starts at the 3 iterations done, not at 0
    assert [json.loads(x)["iteration"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    longer = json.loads((run_dir / "results.json").read_text())
    assert longer["iterations"] == 4 and longer["started_at_iteration"] == 3 and first["started_at_iteration"] == 0
    assert json.loads((run_dir / "results-3it.json").read_text()) == first
    assert (run_dir / "results-3it.md").is_file() and (run_dir / "results_per_task-3it.json").is_file()
    per_task = json.loads((run_dir / "results_per_task.json").read_text())  # each meta-test task's accuracy
    assert set(per_task) == set(longer["results"]) and len(per_task["Random"]["1"]) == 3
    assert json.loads((run_dir / "config.json").read_text())["free"]["iterations"] == 4
    capsys.readouterr()
    assert main([*train, "--resume", "--iterations", "2"]) == 2
    assert "has completed 4 iterations, more than --iterations 2; pass --iterations 4 or more" in capsys.readouterr().err
    assert json.loads((run_dir / "config.json").read_text())["free"]["iterations"] == 4  # untouched by the refusal
    assert main([*train, "--resume", "--iterations", "4", "--seed", "9"]) == 2  # any other flag still differs
    assert "different configuration" in capsys.readouterr().err
    # a lengthening refused for its pool (here: moved away) leaves the run as it was: its results not
    # renamed to an earlier end, its config not lengthened
    results, config = (run_dir / "results.json").read_text(), (run_dir / "config.json").read_text()
    moved = tmp_path / "moved-pool"
    pool_dir.rename(moved)
    try:
        assert main([*train, "--resume", "--iterations", "6"]) == 2
    finally:
        moved.rename(pool_dir)
    assert "no such directory" in capsys.readouterr().err
    assert (run_dir / "results.json").read_text() == results and (run_dir / "config.json").read_text() == config
    assert not (run_dir / "results-4it.json").exists()


def test_train_resume_keeps_the_runs_own_length_and_a_refused_start_its_files(pool_dir, tmp_path, capsys,
                                                                                monkeypatch):
    import fastfree.commands.train as train_command

    real = train_command.train_free
    monkeypatch.setattr(train_command, "train_free", lambda ctx, resume, progress=None, stop=None: real(
        ctx, resume, progress, stop_after=3, stop=stop))
    run_dir = tmp_path / "run"
    assert TINY_FREE[:2] == ["--iterations", "3"]
    flags = TINY_FREE[2:]
    train = ["train", "--pool", str(pool_dir), "--run-dir", str(run_dir), *flags, *SMALL]
    assert main([*train, "--iterations", "5"]) == 0  # "killed" after iteration 3 of 5 (meta-val at 2 only)
    monkeypatch.setattr(train_command, "train_free", real)
    config = (run_dir / "config.json").read_text()
    # a start without --resume into the run is refused before it writes anything of its own
    assert main([*train, "--iterations", "5", "--seed", "7"]) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err
    assert (run_dir / "config.json").read_text() == config
    # ending it at 3, where meta-val never looked, would not be the run of 3 iterations
    assert main([*train, "--resume", "--iterations", "3"]) == 2
    assert "stopped at iteration 3, which meta-val did not evaluate (every 2)" in capsys.readouterr().err
    # --resume alone continues to the run's own 5 iterations (not the preset's 60)
    assert main([*train, "--resume"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["free"]["iterations"] == 5
    assert json.loads((run_dir / "results.json").read_text())["iterations"] == 5
    assert [json.loads(x)["iteration"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4]
    # a finished run whose checkpoint was deleted (to save space) is not overwritten by a fresh start
    (run_dir / "checkpoint.pt").unlink()
    results = (run_dir / "results.json").read_text()
    assert main([*train, "--iterations", "2"]) == 2
    assert "holds a finished run (results.json, results.md) without its checkpoint.pt" in capsys.readouterr().err
    assert (run_dir / "results.json").read_text() == results and (run_dir / "learners").is_dir()


def test_resume_may_change_how_often_a_run_checkpoints(pool_dir, tmp_path, monkeypatch):
    """--checkpoint-every changes no result, so a resume may change it (config.json then records the new one);
    a resume without it keeps the run's own, not the preset's."""
    import fastfree.commands.train as train_command

    real = train_command.train_free

    def stop_after(n):
        monkeypatch.setattr(train_command, "train_free", lambda ctx, resume, progress=None, stop=None: real(
            ctx, resume, progress, stop_after=n, stop=stop))

    run_dir = tmp_path / "run"
    train = ["train", "--pool", str(pool_dir), "--run-dir", str(run_dir), *TINY_FREE, *SMALL]

    def interval() -> int:
        return json.loads((run_dir / "config.json").read_text())["free"]["checkpoint_every"]

    stop_after(1)
    assert main([*train, "--checkpoint-every", "1"]) == 0 and interval() == 1
    stop_after(2)
    assert main([*train, "--resume"]) == 0 and interval() == 1
    monkeypatch.setattr(train_command, "train_free", real)
    assert main([*train, "--resume", "--checkpoint-every", "2"]) == 0 and interval() == 2
    assert json.loads((run_dir / "results.json").read_text())["iterations"] == 3
    assert [json.loads(x)["iteration"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_resume_continues_on_the_runs_own_teachers(pool_dir, tmp_path, capsys, monkeypatch):
    """Another pool at the run's pool path (re-pretrained, overwritten) was taken silently on --resume; the
    same pool under another path (moved, absolute vs relative) was refused. Both now follow the weights."""
    import shutil

    import fastfree.commands.train as train_command

    real = train_command.train_free
    monkeypatch.setattr(train_command, "train_free", lambda ctx, resume, progress=None, stop=None: real(
        ctx, resume, progress, stop_after=2, stop=stop))
    mine = tmp_path / "mine"
    shutil.copytree(pool_dir, mine)
    run_dir = tmp_path / "run"
    train = ["train", "--run-dir", str(run_dir), *TINY_FREE, *SMALL]
    assert main([*train, "--pool", str(mine)]) == 0  # "killed" after 2 iterations
    monkeypatch.setattr(train_command, "train_free", real)
    assert json.loads((run_dir / "pools.json").read_text())["pools"][0]["path"] == str(mine.resolve())
    shutil.rmtree(mine)
    assert main(["pretrain", "--teachers", "3", "--epochs", "1", "--batch-size", "32", "--seed", "7", "--out",
                 str(mine), "--device", "cpu", *SMALL]) == 0
    capsys.readouterr()
    assert main([*train, "--pool", str(mine), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"the pool at {mine.resolve()} is not the one" in err and "its weights differ" in err
    # without --pool the run's own pool would be pretrained (the preset's: hours for cifar-fs) before the
    # weights could be compared: refused by the configuration first, and nothing is pretrained
    assert main([*train, "--resume"]) == 2
    assert "pool: " in capsys.readouterr().err and not (run_dir / "pool").exists()
    moved = tmp_path / "moved"
    shutil.copytree(pool_dir, moved)
    assert main([*train, "--pool", str(moved), "--resume"]) == 0  # the run's own teachers, elsewhere


def test_a_run_started_on_a_gpu_resumes_there(pool_dir, tmp_path, capsys, monkeypatch):
    """The fast engine's settings follow the device: the same flags on a CPU gave another engine, and the
    refusal said "resume with the same flags" (which they were). A GPU run is simulated by its config."""
    import fastfree.commands.train as train_command

    real = train_command.train_free
    monkeypatch.setattr(train_command, "train_free", lambda ctx, resume, progress=None, stop=None: real(
        ctx, resume, progress, stop_after=2, stop=stop))
    run_dir = tmp_path / "run"
    train = ["train", "--pool", str(pool_dir), "--run-dir", str(run_dir), *TINY_FREE, *SMALL]
    assert main(train) == 0
    config = json.loads((run_dir / "config.json").read_text())
    for gpu_engine in (dict(cuda_graphs=True, kernels=True, five_vmap=True, vectorize=True),
                       dict(cuda_graphs=False, kernels=False, five_vmap=True, vectorize=True)):  # --no-cuda-graphs ...
        config["engine"].update(gpu_engine)
        (run_dir / "config.json").write_text(json.dumps(config))
        capsys.readouterr()
        assert main([*train, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "was started on a GPU, and the fast engine's settings follow the device" in err, gpu_engine
        assert "resume it with --device cuda" in err


def test_a_run_with_settings_now_refused_as_unused_still_resumes(pool_dir, tmp_path, capsys, monkeypatch):
    """--learner-update erm --bell-outer adam is refused now (erm does not run BELL's update); a run started
    with it before must still resume, without the flag."""
    import fastfree.commands.train as train_command

    real = train_command.train_free
    monkeypatch.setattr(train_command, "train_free", lambda ctx, resume, progress=None, stop=None: real(
        ctx, resume, progress, stop_after=2, stop=stop))
    run_dir = tmp_path / "run"
    train = ["train", "--pool", str(pool_dir), "--run-dir", str(run_dir), *TINY_FREE, *SMALL, "--learner-update",
             "erm"]
    assert main(train) == 0
    monkeypatch.setattr(train_command, "train_free", real)
    config = json.loads((run_dir / "config.json").read_text())
    config["free"]["bell"]["outer"] = "adam"  # as such a run recorded it
    (run_dir / "config.json").write_text(json.dumps(config))
    assert main([*train, "--resume"]) == 0


def test_a_pool_wider_than_the_meta_test_splits_is_refused_before_training(tmp_path, capsys):
    """20-way teachers and a 16-class meta-val split: the run trained until its first meta-val evaluation,
    then stopped advising a --ways that train does not have."""
    pool = tmp_path / "wide"
    assert main(["pretrain", "--teachers", "1", "--ways", "20", "--epochs", "1", "--batch-size", "64", "--out",
                 str(pool), "--device", "cpu", *SMALL]) == 0
    assert main(["train", "--pool", str(pool), "--run-dir", str(tmp_path / "run"), *TINY_FREE, *SMALL]) == 2
    err = capsys.readouterr().err
    assert "solve 20-way tasks but builtin/val has 16 classes" in err and "pretrain --ways 16" in err
    assert not (tmp_path / "run").exists()


def test_train_refuses_contradictory_engine_flags(pool_dir, tmp_path, capsys):
    run = ["train", "--pool", str(pool_dir), "--run-dir", str(tmp_path / "x"), *TINY_FREE, *SMALL]
    assert main([*run, "--engine", "reference", "--amp"]) == 2
    assert "--amp belongs to the fast engine" in capsys.readouterr().err
    assert main([*run, "--engine", "reference", "--teacher-map", "loop"]) == 2
    assert "--teacher-map belongs to the fast engine" in capsys.readouterr().err
    assert main([*run, "--cuda-graphs"]) == 2
    assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err
    assert main([*run, "--amp", "--dtype", "float64"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main(["train", "--pool", str(pool_dir), "--run-dir", str(tmp_path / "y"), "--resume", *TINY_FREE, *SMALL]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    # refused at once: not after pretraining the pool a run without --pool would train first
    assert main(["train", "--run-dir", str(tmp_path / "z"), "--resume", *TINY_FREE, *SMALL]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err and not (tmp_path / "z").exists()
    # a run that cannot start (here: no such pool) leaves no run directory behind
    assert main(["train", "--pool", str(tmp_path / "none"), "--run-dir", str(tmp_path / "w"), *TINY_FREE, *SMALL]) == 2
    assert "no such directory" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_train_amp_runs_and_records_the_engine(pool_dir, tmp_path):
    """`fastfree train --amp --teacher-map vmap` on a CPU: bf16 autocast, FIVE's teachers vmapped
    (replay's tasks still looped: the CPU's default). (--compile is tested on FIVE itself in
    tests/engine: inductor on a CPU compiles for minutes, too long for a CLI smoke test.)"""
    out = tmp_path / "c.json"
    assert main(["train", "--amp", "--teacher-map", "vmap", "--pool", str(pool_dir), "--run-dir", str(tmp_path / "c"),
                 "--json", str(out), *TINY_FREE, *SMALL]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["engine"] == {"engine": "fast", "vectorize": False, "five_vmap": True, "fuse_upsample": True,
                                     "compile": False,
                                     "cuda_graphs": False, "amp": True, "kernels": False,
                                     "compile_backend": "inductor"}
    lines = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["five_loss"] == m["five_loss"] for m in lines)  # finite, not NaN
    assert set(lines[-1]["phase_s"]) >= {"five", "generator", "bell", "replay"}


@pytest.mark.slow
def test_short_free_run_on_real_cifar_fs(cifar_fs_root, tmp_path):
    """The whole train path on the real images: a 2-teacher pool, 3 iterations, few tasks."""
    data = ["--data", "cifar-fs", "--data-root", str(cifar_fs_root), "--device", "cpu"]
    pool = tmp_path / "pool"
    assert main(["pretrain", "--teachers", "2", "--epochs", "1", "--out", str(pool), *data]) == 0
    out = tmp_path / "r.json"
    args = ["train", "--pool", str(pool), "--run-dir", str(tmp_path / "run"), "--json", str(out), *TINY_FREE, *data]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["config"]["data"]["source"] == "cifar-fs" and r["results"]["Random"]["1"]["tasks"] == 3


def test_train_ablation_flags_reach_the_config(pool_dir, tmp_path, capsys):
    out = tmp_path / "a.json"
    flags = ["--generator", "sequential", "--learner-update", "erm", "--targets", "hard", "--replay-first-order",
             "--k", "2", "--memory-per-class", "30"]
    assert main(["train", "--pool", str(pool_dir), "--run-dir", str(tmp_path / "abl"), "--json", str(out),
                 *TINY_FREE, *SMALL, *flags]) == 0
    free = json.loads(out.read_text())["config"]["free"]
    assert free["generator"] == "sequential" and free["five"]["k"] == 2
    assert free["bell"]["mode"] == "erm" and free["bell"]["targets"] == "hard"
    assert free["replay"]["second_order"] is False and free["memory_per_class"] == 30
    # a bank smaller than a replay task's images per class is refused before anything is written
    assert main(["train", "--pool", str(pool_dir), "--run-dir", str(tmp_path / "small"), "--memory-per-class", "10",
                 *TINY_FREE, *SMALL]) == 2
    assert "raise --memory-per-class" in capsys.readouterr().err and not (tmp_path / "small").exists()
    # BELL's own update (erm does not run it): parsed into the config without a run
    from fastfree.cli import build_parser
    from fastfree.commands.train import free_config
    from fastfree.config import get_preset

    args = build_parser().parse_args(["train", "--bell-outer", "adam", "--bell-inner", "sgd"])
    bell = free_config(args, get_preset("demo").free).bell
    assert (bell.mode, bell.outer, bell.inner_optimizer) == ("bell", "adam", "sgd")
