"""`fastfree status` (fastfree/commands/status.py): a run or pool folder read as it stands, beside the command
that works in it or after; the pace, time left and the command that continues the run."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastfree.cli import main
from fastfree.commands.status import command_to, default_folders, final_metatest, pace, status_lines, status_of, \
    time_left
from fastfree.errors import FastFreeError
from fastfree.folder_lock import OWNER
from fastfree.free.run import CHECKPOINT, METRICS
from fastfree.pool.progress import PROGRESS
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL


def test_pace_is_the_recent_median_after_the_warm_up_and_meta_val_is_timed_apart():
    records = [{"iteration": i, "warmup": True, "iteration_s": 1.0} for i in range(2)]
    assert pace(records) == {"iteration_s": 1.0, "of_iterations": 2, "warmup_only": True, "val_s": None}
    records += [{"iteration": i, "warmup": False, "iteration_s": float(i)} for i in range(2, 20)]
    records[9]["val_s"], records[19]["val_s"] = 4.0, 6.0
    p = pace(records)
    assert p["iteration_s"] == pytest.approx(14.5) and p["of_iterations"] == 10  # iterations 10-19
    assert p["val_s"] == 5.0 and not p["warmup_only"]
    assert pace([])["iteration_s"] is None


def test_time_left_counts_the_iterations_and_the_meta_val_evaluations_still_to_come():
    free = {"warmup": 1, "eval_every": 2, "iterations": 5}
    left = time_left(free, 2, {"iteration_s": 3.0, "val_s": 10.0})
    assert (left["iterations"], left["evaluations"]) == (3, 2)  # evaluated after 4 and after 5 (the last)
    assert left["seconds"] == 3 * 3.0 + 2 * 10.0 and left["val_timed"]
    untimed = time_left(free, 2, {"iteration_s": 3.0, "val_s": None})
    assert untimed["seconds"] == 9.0 and not untimed["val_timed"]  # said, not silently counted as 0
    assert time_left(free, 5, {"iteration_s": None, "val_s": None}) == {"iterations": 0, "evaluations": 0,
                                                                       "seconds": None, "val_timed": True}


def test_a_run_is_called_quiet_later_while_its_pace_is_the_warm_ups():
    """The first iteration after the warm-up also runs BELL and replay (3-4x longer on CIFAR-FS): silence that
    is usual for it is not called a possible hang; longer silence still is."""
    from fastfree.commands.status import _quiet

    def silent_for(seconds: float, warmup_only: bool) -> str:
        return _quiet({"state": "training", "last_logged_ago_s": seconds,
                       "pace": {"iteration_s": 12.0, "val_s": None, "warmup_only": warmup_only}})

    assert "quiet for 6 times" in silent_for(73, warmup_only=False)
    assert silent_for(73, warmup_only=True) == ""  # the sequential ablation's first full iteration, as seen
    assert "quiet for 25 times" in silent_for(300, warmup_only=True)


def test_the_final_meta_test_is_estimated_at_meta_vals_pace_for_two_to_three_learners():
    """600 meta-test tasks where meta-val took 37 s per 200: 222-333 s (the CIFAR-FS runs' took 268-271 s)."""
    speed = {"iteration_s": 45.0, "val_s": 37.0}
    typed = {"argv": ["train", "--preset", "cifar-fs", "--data-root", "d", "--val-tasks", "200"], "cwd": "/"}
    est = final_metatest(typed, speed, 200)
    assert est["tasks"] == 600 and est["low_s"] == pytest.approx(222) and est["high_s"] == pytest.approx(333)
    assert final_metatest({**typed, "argv": typed["argv"] + ["--test-tasks", "100"]}, speed, 200)["tasks"] == 100
    # not known: meta-val not timed yet, no recorded command, one of another version
    assert final_metatest(typed, {**speed, "val_s": None}, 200) is None
    assert final_metatest(None, speed, 200) is None
    assert final_metatest({"argv": ["train", "--no-such-flag"], "cwd": "/"}, speed, 200) is None


def test_the_command_that_continues_a_run_is_its_last_call_with_resume_and_where_it_was_typed(tmp_path):
    here, demo = {"argv": ["train", "--preset", "demo", "--iterations", "80", "--resume"], "cwd": str(Path.cwd())}, \
        Path("runs/demo")
    assert command_to(here, demo, resume=True) == "fastfree train --preset demo --iterations 80 --resume"
    assert command_to(here, demo, resume=False) == "fastfree train --preset demo --iterations 80"  # no checkpoint
    assert command_to(here, demo, resume=True, lengthen=True) == "fastfree train --preset demo --resume --iterations N"
    there = {"argv": ["train", "--run-dir", "my run", "--iterations=80", "--pool", "p"], "cwd": "/some where"}
    assert command_to(there, Path("/some where/my run"), resume=True) == \
        "cd '/some where' && fastfree train --run-dir 'my run' --iterations=80 --pool p --resume"
    assert command_to(there, Path("/some where/my run"), resume=True, lengthen=True) == \
        "cd '/some where' && fastfree train --run-dir 'my run' --pool p --resume --iterations N"
    # moved or copied since: the command aims at this folder (its other paths still read from where it was typed)
    assert command_to(there, tmp_path / "copy", resume=True) == \
        f"cd '/some where' && fastfree train --iterations=80 --pool p --run-dir {tmp_path / 'copy'} --resume"
    assert command_to(here, tmp_path, resume=True) == f"fastfree train --preset demo --iterations 80 --run-dir " \
                                                      f"{tmp_path} --resume"
    assert "with the flags it was started with (config.json)" in command_to(None, tmp_path, resume=True)


def test_a_finished_run_its_results_picks_and_how_to_lengthen_it(run, capsys, tmp_path):
    run_dir, results = run
    assert main(["status", str(run_dir), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "s.json").read_text())["folders"][0]
    assert s["state"] == "finished" and s["holder"] is None and s["iterations"] == 3 == s["logged"]
    assert s["results"] == json.loads((run_dir / "results.json").read_text())["results"]
    assert s["pace"]["val_s"] > 0  # meta-val evaluations are timed in metrics.jsonl
    recorded = json.loads((run_dir / "command.json").read_text())  # train's own call, as typed
    assert recorded["argv"][0] == "train" and str(run_dir) in recorded["argv"]
    assert s["lengthen"] == command_to(recorded, run_dir, resume=True, lengthen=True)
    assert f"{run_dir}: finished, 3 iterations" in out and "no command is running in it" in out
    for name, table in results.items():
        assert f"{name}: 1-shot {table['1']['mean']:.2f} +- {table['1']['ci95']:.2f}" in out
    assert f"lengthen it: {s['lengthen']}" in out


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_a_running_run_is_told_with_its_command_and_a_stopped_one_with_the_command_that_continues_it(run, tmp_path):
    pool, run_dir = run[0].parent / "pool", tmp_path / "run"
    flags = [*TRAIN, *SMALL]
    flags[flags.index("--iterations") + 1] = "500"  # far more than it will run
    argv = ["train", "--pool", str(pool), "--run-dir", str(run_dir), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastfree", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while _lines(run_dir / METRICS) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        running = status_of(run_dir)
        proc.send_signal(signal.SIGTERM)  # it checkpoints the iteration under way
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert running["state"] == "training" and running["holder"]["pid"] == proc.pid
    assert running["holder"]["argv"] == argv and running["iterations"] == 500 and running["logged"] >= 2
    assert running["left"]["iterations"] == 500 - running["logged"] and running["left"]["seconds"] > 0
    text = "\n".join(status_lines(running))
    assert f"`{shlex.join(['fastfree', *argv])}` is running in it (pid {proc.pid} on" in text
    assert f"training: iteration {running['logged']} of 500 logged" in text and "left: about" in text
    assert "quiet for" not in text
    silent = {**running, "last_logged_ago_s": 100 * (running["pace"]["iteration_s"] + 60)}
    assert "quiet for" in "\n".join(status_lines(silent))  # a hang is told apart from a slow iteration

    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = status_of(run_dir)
    done = torch.load(run_dir / CHECKPOINT, weights_only=True)["iteration"]
    assert stopped["state"] == "stopped" and stopped["holder"] is None
    assert stopped["checkpointed"] == done == stopped["logged"]
    assert stopped["continue"] == shlex.join(["fastfree", *argv, "--resume"])  # typed here, so no `cd`
    assert stopped["left"]["iterations"] == 500 - done
    assert f"continue it: {stopped['continue']}" in "\n".join(status_lines(stopped))


def test_a_run_stopped_before_its_first_checkpoint_starts_again_without_resume(run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.json", "command.json"):
        (run_dir / name).write_bytes((run[0] / name).read_bytes())
    (run_dir / METRICS).write_text((run[0] / METRICS).read_text().splitlines()[0] + "\n")  # one iteration, lost
    s = status_of(run_dir)
    assert s["state"] == "stopped" and (s["logged"], s["checkpointed"]) == (1, 0)
    assert "--resume" not in s["continue"] and s["left"]["iterations"] == 3
    text = "\n".join(status_lines(s))
    assert f"no checkpoint yet (one every {s['checkpoint_every']} iterations) (1 iteration(s) after it run again " \
           "when it continues)" in text
    assert "(meta-val not timed yet: not counted)" in text  # none evaluated yet, so none timed


def _progress(folder, accuracies):
    progress = folder / PROGRESS
    progress.mkdir(parents=True)
    for i, acc in enumerate(accuracies):
        save_file({"w": torch.zeros(1)}, str(progress / f"teacher{i:04d}.safetensors"),
                  metadata={"heldout_accuracy": str(acc)})


def test_pools_finished_and_interrupted_with_the_command_that_continues_them(run, tmp_path):
    s = status_of(run[0].parent / "pool")
    assert s["kind"] == "pool" and s["state"] == "finished" and s["teachers"] == 2 and s["pretraining"] is None
    growing = tmp_path / "pools" / "growing"
    _progress(growing, (0.5, 0.7))
    s = status_of(growing)
    assert s["state"] == "interrupted" and s["teachers"] is None and s["pretraining"]["finished"] == 2
    assert s["pretraining"]["heldout_mean"] == pytest.approx(0.6) and s["continue"] is None  # who ran it: unknown
    assert "pretraining interrupted: 2 teachers finished so far, held-out 60.0 % on average" in \
        "\n".join(status_lines(s))
    # the last command there, as its lock recorded it (kept after it ended)
    (growing / OWNER).write_text(json.dumps({"command": "fastfree pretrain", "cwd": str(tmp_path / "pools"),
                                             "argv": ["pretrain", "--teachers", "20", "--out", "growing"]}))
    assert status_of(growing)["continue"] == f"cd {tmp_path / 'pools'} && fastfree pretrain --teachers 20 --out " \
                                             "growing --resume"


def test_a_run_stopped_while_pretraining_its_own_pool_continues_with_the_same_command(tmp_path):
    run_dir = tmp_path / "runs" / "mine"
    _progress(run_dir / "pool", (0.5,))
    argv = ["train", "--preset", "demo", "--run-dir", "runs/mine"]
    (run_dir / "pool" / OWNER).write_text(json.dumps({"command": "fastfree train", "cwd": str(tmp_path),
                                                      "argv": argv}))
    s = status_of(run_dir)
    assert s["state"] == "pretraining its pool" and s["pools"][0]["state"] == "interrupted" and s["holder"] is None
    text = "\n".join(status_lines(s))
    assert f"{run_dir}: a FREE run stopped while pretraining its pool" in text
    # no checkpoint yet: the same command, not --resume (which needs one)
    assert f"continue it: cd {tmp_path} && fastfree train --preset demo --run-dir runs/mine\n" in text + "\n"
    assert status_of(run_dir / "pool")["continue"] == s["pools"][0]["continue"]  # asked of the pool itself too


def test_a_copied_run_is_continued_in_the_copy_and_a_damaged_checkpoint_said(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    (copy / "results.json").unlink()  # as if it had stopped at its last checkpoint
    s = status_of(copy)
    assert s["state"] == "stopped" and s["continue"].endswith(f"--run-dir {copy} --resume")
    assert s["final_metatest"]["tasks"] == 3  # the run's --test-tasks, at its meta-val's pace (2 tasks)
    assert s["final_metatest"]["low_s"] == pytest.approx(2 * s["pace"]["val_s"] * 3 / 2)
    assert "left: the final meta-test (about " in "\n".join(status_lines(s))
    checkpoint = copy / CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    s = status_of(copy)
    assert s["checkpoint_damaged"] and "is damaged" in "\n".join(status_lines(s))
    assert "continue" not in s  # not a fresh start (train refuses one over a run) nor --resume from it


def test_a_folder_that_is_neither_is_named_and_the_others_still_reported(run, tmp_path, capsys):
    assert main(["status", str(tmp_path), str(run[0])]) == 2
    captured = capsys.readouterr()
    assert f"{tmp_path}: error: {tmp_path}: no config.json, manifest.json or pool pretraining in it" in captured.out
    assert f"{run[0]}: finished" in captured.out
    assert "1 of 2 folders could not be read" in captured.err
    assert main(["status", str(tmp_path / "absent")]) == 2
    assert "no such folder" in capsys.readouterr().out


def test_a_bare_status_reports_the_runs_and_pools_in_the_default_folders(tmp_path):
    for folder, name in (("runs/a", "config.json"), ("runs/b", "pool"), ("pools/p", "manifest.json")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).mkdir() if name == "pool" else (tmp_path / folder / name).write_text("{}")
    (tmp_path / "runs" / "unrelated").mkdir()
    assert default_folders(tmp_path) == [tmp_path / "runs/a", tmp_path / "runs/b", tmp_path / "pools/p"]
    with pytest.raises(FastFreeError, match="no run or pool folder under .*pass the folders"):
        default_folders(tmp_path / "runs" / "unrelated")


def test_a_multi_domain_run_pretraining_its_pools_reports_each(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "pool-0-builtin").mkdir(parents=True)
    (run_dir / "pool-0-builtin" / "manifest.json").write_text(json.dumps(
        {"teachers": [{"arch": "conv4", "heldout_accuracy": 0.5}]}))
    _progress(run_dir / "pool-1-builtin", (0.7,))
    (run_dir / "pooled-elsewhere").mkdir()  # not one of train's pool folders
    s = status_of(run_dir)
    assert [Path(p["folder"]).name for p in s["pools"]] == ["pool-0-builtin", "pool-1-builtin"]
    assert [p["state"] for p in s["pools"]] == ["finished", "interrupted"]
    text = "\n".join(status_lines(s))
    assert f"{run_dir}: a FREE run stopped while pretraining its pools" in text
    assert "  pool-1-builtin:\n  pretraining interrupted: 1 teacher finished so far" in text
