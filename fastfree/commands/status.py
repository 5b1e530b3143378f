"""`fastfree status FOLDER [FOLDER ...]`: where a `fastfree train` run or a teacher pool stands, read from
its folder while a command works in it or after. It takes no lock and writes nothing, so it answers
beside a running command (a run in another terminal, a job on a cluster, a `nohup` in the background).

A run: whether a command holds it now (its folder lock, fastfree/folder_lock.py: which command, pid,
since when), iterations logged and checkpointed out of its total, the pace (median of its recent
iterations; meta-val evaluations timed apart) and the time left at that pace, how long ago it last
logged, meta-val's last evaluation and current picks, a finished run's results and earlier ends, and
the command that continues or lengthens it (command.json: its last `train` call as typed, and where).
A pool: whether a command holds it, its finished teachers (and those paused mid-way) with their held-out
accuracy; a run still pretraining its own pool is told by RUN/pool.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

from safetensors import SafetensorError, safe_open

from fastfree.commands.common import write_json
from fastfree.commands.train import COMMAND
from fastfree.errors import FastFreeError
from fastfree.folder_lock import holder, last_holder
from fastfree.free.run import CHECKPOINT, METRICS, default_run_dir, is_evaluation, load_checkpoint, metric_records, \
    shot_cells
from fastfree.free.selection import BEST, read_selected
from fastfree.pool.progress import PAUSED, PROGRESS
from fastfree.pool.store import MANIFEST
from fastfree.profiling.compare_runs import read_run
from fastfree.read_back import read_json

PACE_OF = 10  # the recent iterations whose median sets the pace (the first ones compile, warm up, hold no BELL)
QUIET_AFTER = 5  # a running command silent for this many times its pace (and a minute) is said to be quiet
WARMUP_UNDERSTATES = 4  # ... times this while its pace is the warm-up's (measured: 12 s vs 37-45 s per iteration)


def pace(records: list[dict]) -> dict:
    """Seconds per iteration (median of the last PACE_OF after the warm-up, or of the warm-up's while the run
    is in it: its iterations run no BELL or replay, so the pace is then too low) and per meta-val evaluation
    (median of the last three; runs from before 2026-12-07 did not time them) (pure)."""
    trained = [m for m in records if not m.get("warmup") and "iteration_s" in m]
    recent = (trained or [m for m in records if "iteration_s" in m])[-PACE_OF:]
    evaluations = [m["val_s"] for m in records if "val_s" in m][-3:]
    return {"iteration_s": statistics.median(m["iteration_s"] for m in recent) if recent else None,
            "of_iterations": len(recent), "warmup_only": bool(recent) and not trained,
            "val_s": statistics.median(evaluations) if evaluations else None}


def time_left(free: dict, done: int, speed: dict) -> dict:
    """What is left from `done` iterations to the run's end, and the seconds it takes at `speed` (pure):
    None where no iteration was timed; evaluations left uncounted where none was timed (`val_timed`)."""
    cfg = SimpleNamespace(warmup=free["warmup"], eval_every=free["eval_every"], iterations=free["iterations"])
    iterations = max(cfg.iterations - done, 0)
    evaluations = sum(is_evaluation(i, cfg) for i in range(done + 1, cfg.iterations + 1))
    seconds = None
    if speed["iteration_s"] is not None:
        seconds = iterations * speed["iteration_s"] + evaluations * (speed["val_s"] or 0.0)
    return {"iterations": iterations, "evaluations": evaluations, "seconds": seconds,
            "val_timed": speed["val_s"] is not None or evaluations == 0}


def _without(argv: list[str], flag: str, takes_value: bool) -> list[str]:
    """argv without `flag` (and its value, given as the next word or after "=") (pure)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = takes_value
        elif not (takes_value and a.startswith(flag + "=")):
            out.append(a)
    return out


def _parsed(argv: list[str]):
    """A recorded command line read by the CLI's own parser (its defaults filled in), or None for one it
    refuses (a command line of another version)."""
    from fastfree.cli import build_parser  # here: the parser imports the commands' module names only

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return build_parser().parse_args(argv)
    except SystemExit:
        return None


def final_metatest(record: dict | None, speed: dict, val_tasks: int) -> dict | None:
    """How long the final meta-test takes at meta-val's pace (val_s per evaluation of one learner on
    val_tasks tasks), or None where that or the meta-test's task count (the recorded command's --test-tasks,
    else its preset's) is not known. It tests the last learner and Random on every shot count, and each
    shot count's meta-val pick that is not the last learner: two to three learners' worth (measured: the
    20 x 60 CIFAR-FS runs' 600 tasks took 268-271 s where meta-val took 37 s per 200; a load that changes since
    meta-val's last evaluations moves it, on those runs from 0.7x to 1.1x of the bounds)."""
    from fastfree.config import PRESETS

    args = _parsed(list(record["argv"])) if record else None
    if speed["val_s"] is None or args is None or args.command != "train":
        return None
    tasks = args.test_tasks or PRESETS[args.preset].metatest.tasks
    per_learner = speed["val_s"] * tasks / val_tasks
    return {"tasks": tasks, "low_s": 2 * per_learner, "high_s": 3 * per_learner}


def _aimed_here(argv: list[str], cwd: str | None, folder: Path) -> list[str]:
    """argv (`train` or `pretrain`), its folder (--run-dir, --out, or the preset's default, read from where it
    was typed) made `folder` where that was moved or copied since."""
    from fastfree.config import PRESETS

    args = _parsed(argv)
    if args is None:  # a command line of another version: as typed
        return argv
    if args.command == "train":
        flag, typed = "--run-dir", default_run_dir(args.run_dir, args.preset)
    elif args.command == "pretrain":
        flag, typed = "--out", Path(args.out or PRESETS[args.preset].pool_dir)
    else:
        return argv
    if (Path(cwd or ".") / typed).resolve() == folder.resolve():
        return argv
    return [*_without(argv, flag, True), flag, str(folder.resolve())]


def _typed_there(argv: list[str], cwd: str | None) -> str:
    """The command, run where it was typed (its relative paths read from there) (pure)."""
    text = shlex.join(["fastfree", *argv])
    return text if not cwd or Path(cwd) == Path.cwd() else f"cd {shlex.quote(cwd)} && {text}"


def command_to(record: dict | None, run_dir: Path, resume: bool, lengthen: bool = False) -> str:
    """The `fastfree train` command that continues (resume) or starts again the run, from its last call as
    typed (`record`, command.json), run where it was typed (its relative paths are read from there);
    `lengthen` asks for N iterations in all, more than the run's."""
    if record is None:  # a run from before command.json
        return (f"fastfree train --run-dir {shlex.quote(str(run_dir))}{' --resume' if resume else ''}"
                f"{' --iterations N' if lengthen else ''} with the flags it was started with (config.json)")
    argv = _aimed_here(_without(list(record["argv"]), "--resume", False), record.get("cwd"), run_dir)
    if lengthen:
        argv = [*_without(argv, "--iterations", True), "--resume", "--iterations", "N"]
    elif resume:
        argv.append("--resume")
    return _typed_there(argv, record.get("cwd"))


def pretraining_command(last: dict | None, folder: Path, run_dir: Path | None = None) -> str | None:
    """The command that continues an interrupted pretraining into `folder`, from the last one there (`last`,
    its lock's record): `pretrain` with --resume; a run's own pool (RUN/pool) the same `train`, without it."""
    if not last or not last.get("argv") or last["argv"][0] not in ("pretrain", "train"):
        return None
    if last["argv"][0] == "train":  # a run's own pool: RUN/pool (or RUN/pool-I-NAME)
        run_dir = run_dir or folder.parent
    argv = _aimed_here(_without(list(last["argv"]), "--resume", False), last.get("cwd"), run_dir or folder)
    return _typed_there([*argv, "--resume"] if argv[0] == "pretrain" else argv, last.get("cwd"))


def _holder_text(who: dict | None) -> str:
    if who is None:
        return "no command is running in it"
    if "unknown" in who:
        return f"whether a command runs in it is unknown ({who['unknown']})"
    command = shlex.join(["fastfree", *who["argv"]]) if who.get("argv") else who.get("command", "a fastfree command")
    where = f"pid {who['pid']} on {who.get('host', '?')}" if "pid" in who else "?"
    return f"`{command}` is running in it ({where}{', since ' + who['since'] if who.get('since') else ''})"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _ago(seconds: float) -> str:
    return _duration(seconds) + " ago"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def own_pools(run_dir: Path) -> list[Path]:
    """The pools `train` pretrains inside a run folder: RUN/pool, or one per domain, RUN/pool-I-NAME."""
    return [p for p in sorted(run_dir.glob("pool*")) if p.is_dir() and re.fullmatch(r"pool(-\d+-.+)?", p.name)]


def pool_status(folder: Path, run_dir: Path | None = None) -> dict:
    """A pool's folder (`run_dir`: the run it is the own pool of): its finished teachers (the manifest's, and
    its pretraining's progress so far) and, if that was interrupted, the command that continues it."""
    manifest = folder / MANIFEST
    pool = read_json(manifest, "Restore it from a copy of the pool") if manifest.is_file() else None
    progress, accuracies = folder / PROGRESS, []
    finished = sorted(progress.glob("teacher[0-9]*.safetensors")) if progress.is_dir() else []
    for path in finished:
        try:
            with safe_open(str(path), "pt") as f:
                accuracies.append(float(f.metadata()["heldout_accuracy"]))
        except (SafetensorError, OSError, KeyError, TypeError, ValueError):
            pass  # read whole by the pretraining that continues it; here only counted
    paused = sorted(progress.glob(PAUSED.format("[0-9]*"))) if progress.is_dir() else []
    in_pool = [t.get("heldout_accuracy") for t in pool["teachers"]] if pool else []
    known = [a for a in in_pool if a is not None]
    who = holder(folder)
    if who is not None and "unknown" not in who:
        state = "in use"
    elif progress.is_dir():
        state = "interrupted" if who is None else "pretraining or interrupted"
    else:
        state = "finished"
    status = {"kind": "pool", "folder": str(folder), "holder": who, "state": state,
              "teachers": len(in_pool) if pool else None,
              "heldout_mean": sum(known) / len(known) if known else None,
              "architectures": sorted({t["arch"] for t in pool["teachers"]}) if pool else None,
              "pretraining": {"finished": len(finished), "paused_files": len(paused),
                              "heldout_mean": sum(accuracies) / len(accuracies) if accuracies else None,
                              "last_saved_ago_s": time.time() - max(p.stat().st_mtime for p in finished + paused)
                              if finished or paused else None} if progress.is_dir() else None}
    if state in ("interrupted", "pretraining or interrupted"):
        status["continue"] = pretraining_command(last_holder(folder), folder, run_dir)
    return status


def run_status(run_dir: Path) -> dict:
    """Where one `fastfree train` run stands (its folder read as it is now)."""
    who = holder(run_dir)
    if not (run_dir / "config.json").is_file():  # a run that has not started its iterations: its own pool first
        pools = [pool_status(p, run_dir) for p in own_pools(run_dir)]
        if pools:  # the run's folder is locked once its pools are ready, each pool's before
            working = [p for p in pools if p["holder"] is not None]
            return {"kind": "run", "folder": str(run_dir), "holder": who or (working[0]["holder"] if working else None),
                    "state": "pretraining its pool", "pools": pools}
        raise FastFreeError(f"{run_dir}: no config.json, manifest.json or pool pretraining in it: not a run or pool "
                            "folder of fastfree (`fastfree train` writes a run's, `fastfree pretrain --out` a pool's)")
    run = read_run(run_dir)
    free, logged = run["config"]["free"], run["iterations_done"]
    try:  # read whole and checked (train's own quick read skips the tensors' checksums): a damaged one is said now
        checkpointed = int(load_checkpoint(run_dir)["iteration"]) if (run_dir / CHECKPOINT).is_file() else 0
        damaged = None
    except FastFreeError as e:
        checkpointed, damaged = 0, str(e)
    speed = pace(metric_records(run_dir))
    results = run["results"] if run.get("iterations") == free["iterations"] else None
    if results is not None:
        state = "finished"
    elif who is not None and "unknown" in who:
        state = "unfinished"  # running or stopped: cannot be told
    elif who is not None:
        state = "final meta-test" if logged >= free["iterations"] else "training"
    else:
        state = "stopped"
    metrics_file = run_dir / METRICS
    record_file = run_dir / COMMAND
    record = read_json(record_file, "Delete it: status then names the flags from config.json") \
        if record_file.is_file() else None
    left = None
    if state in ("training", "stopped", "unfinished"):
        left = time_left(free, logged if state == "training" else checkpointed, speed)
    final = final_metatest(record, speed, free["val_tasks"]) if state != "finished" else None
    picks = {}
    if (run_dir / BEST).is_file():
        try:
            picks = {("all" if k is None else str(k)): {"iteration": v.iteration, "val": v.val}
                     for k, v in read_selected(run_dir / BEST).items()}
        except FastFreeError as e:
            picks = {"error": str(e)}
    status = {
        "kind": "run", "folder": str(run_dir), "holder": who, "state": state,
        "preset": run["config"].get("preset"), "iterations": free["iterations"], "warmup": free["warmup"],
        "checkpoint_every": free.get("checkpoint_every"),
        "logged": logged, "checkpointed": checkpointed, "checkpoint_damaged": damaged,
        "last_logged_ago_s": time.time() - metrics_file.stat().st_mtime if metrics_file.is_file() else None,
        "pace": speed, "left": left, "final_metatest": final,
        "meta_val": run["meta_val"][-1] if run["meta_val"] else None, "picks": picks,
        "results": results, "earlier_ends": sorted(run["earlier_ends"]),
        "train_seconds": run.get("train_seconds"), "device_name": run.get("device_name"),
    }
    if state in ("stopped", "unfinished") and damaged is None:  # a damaged checkpoint: its message gives the fix
        status["continue"] = command_to(record, run_dir, resume=checkpointed > 0)
    elif state == "finished":
        status["lengthen"] = command_to(record, run_dir, resume=True, lengthen=True)
    return status


def status_of(folder: Path) -> dict:
    if not folder.is_dir():
        raise FastFreeError(f"{folder}: no such folder: pass a run folder (`fastfree train --run-dir`, default "
                            "runs/<preset>) or a pool folder (`fastfree pretrain --out`)")
    if (folder / MANIFEST).is_file() or (folder / PROGRESS).is_dir():
        return pool_status(folder)
    return run_status(folder)


def _pool_lines(s: dict) -> list[str]:
    lines = [f"  {_holder_text(s['holder'])}"]
    if s["teachers"] is not None:
        mean = "" if s["heldout_mean"] is None else f", held-out accuracy {100 * s['heldout_mean']:.1f} % on average"
        lines.append(f"  a finished pool: {_count(s['teachers'], 'teacher')} ({', '.join(s['architectures'])}){mean}")
    p = s["pretraining"]
    if p is not None:
        mean = f", held-out {100 * p['heldout_mean']:.1f} % on average" if p["heldout_mean"] is not None else ""
        paused = f", {p['paused_files']} file(s) of teachers paused mid-way" if p["paused_files"] else ""
        saved = f"; last saved {_ago(p['last_saved_ago_s'])}" if p["last_saved_ago_s"] is not None else ""
        what = "pretraining" if s["state"] == "in use" else f"pretraining {s['state']}"
        lines.append(f"  {what}: {_count(p['finished'], 'teacher')} finished so far{mean}{paused}{saved}")
    if s.get("continue"):
        lines.append(f"  continue it: {s['continue']}")
    elif "continue" in s:
        lines.append("  continue it: the same `fastfree pretrain` command with --resume (or, for a run's own pool, "
                     "the same `fastfree train` command)")
    return lines


def status_lines(s: dict) -> list[str]:
    """What `fastfree status` prints for one folder (pure)."""
    if s["kind"] == "pool":
        return [f"{s['folder']}: teacher pool ({s['state']})"] + _pool_lines(s)
    if s["state"] == "pretraining its pool":
        running = any(p["state"] == "in use" for p in s["pools"])
        lines = [f"{s['folder']}: a FREE run {'' if running else 'stopped while '}pretraining its "
                 f"pool{'s' if len(s['pools']) > 1 else ''} (no iteration yet)", f"  {_holder_text(s['holder'])}"]
        for p in s["pools"]:
            lines += ([f"  {Path(p['folder']).name}:"] if len(s["pools"]) > 1 else []) + _pool_lines(p)[1:]
        return lines
    total, lines = s["iterations"], []
    head = {"finished": f"finished, {total} iterations",
            "training": f"training: iteration {s['logged']} of {total} logged",
            "final meta-test": f"all {total} iterations done, in its final meta-test",
            "stopped": f"stopped: {s['logged']} of {total} iterations logged",
            "unfinished": f"{s['logged']} of {total} iterations logged"}[s["state"]]
    lines.append(f"{s['folder']}: {head}" + (f" ({s['preset']} preset)" if s.get("preset") else ""))
    lines.append(f"  {_holder_text(s['holder'])}")
    if s["checkpoint_damaged"]:
        lines.append(f"  checkpoint: {s['checkpoint_damaged']}")
    elif s["state"] != "finished":
        again = s["logged"] - s["checkpointed"]
        lines.append((f"  checkpointed at iteration {s['checkpointed']}" if s["checkpointed"] else
                      f"  no checkpoint yet (one every {s['checkpoint_every']} iterations)")
                     + (f" ({again} iteration(s) after it run again when it continues)" if again > 0 and
                        s["state"] != "training" else ""))
    if s["last_logged_ago_s"] is not None and s["state"] in ("training", "final meta-test"):
        lines.append(f"  last iteration logged {_ago(s['last_logged_ago_s'])}" + _quiet(s))
    p = s["pace"]
    if p["iteration_s"] is not None:
        lines.append(f"  pace: {p['iteration_s']:.1f} s per iteration (median of the last {p['of_iterations']}"
                     + (", warm-up only: later ones also run BELL and replay, so longer)" if p["warmup_only"] else ")")
                     + (f", {p['val_s']:.1f} s per meta-val evaluation" if p["val_s"] is not None else ""))
    left, final = s["left"], s.get("final_metatest")
    test = "the final meta-test" + ("" if final is None else
                                    f" (about {_duration(final['low_s'])} to {_duration(final['high_s'])} at "
                                    f"meta-val's pace: {final['tasks']} tasks for 2-3 learners)")
    if s["state"] == "final meta-test" or (left is not None and left["iterations"] == 0):
        lines.append(f"  left: {test}")
    elif left is not None and left["seconds"] is not None:
        evals = f" and {left['evaluations']} meta-val evaluation(s)" if left["evaluations"] else ""
        untimed = "" if left["val_timed"] else " (meta-val not timed " + (
            "by this run's version" if s["meta_val"] else "yet") + ": not counted)"
        lines.append(f"  left: about {_duration(left['seconds'])} for {left['iterations']} iteration(s){evals}"
                     f"{untimed}, then {test}")
    if s["meta_val"]:
        mv = s["meta_val"]
        shots = sorted(mv["val"], key=int)
        cells = ", ".join(f"{k}-shot {c}" for k, c in zip(shots, shot_cells(mv["val"], shots)))
        lines.append(f"  meta-val at iteration {mv['iteration']}: {cells}")
    picks = s["picks"]
    if picks and "error" not in picks:
        lines.append("  selected on meta-val: " + ", ".join(
            f"{k if k == 'all' else k + '-shot'} iteration {v['iteration']} ({v['val']:.2f})"
            for k, v in picks.items()))
    elif picks:
        lines.append(f"  selected on meta-val: cannot be read ({picks['error']})")
    if s["results"]:
        lines.append("  meta-test (results.md):")
        for name, table in s["results"].items():
            shots = sorted((k for k in table if k.isdigit()), key=int)
            lines.append(f"    {name}: " + ", ".join(f"{k}-shot {c}" for k, c in zip(shots, shot_cells(table, shots))))
        if s.get("train_seconds") is not None:
            lines.append(f"  its last call trained for {_duration(s['train_seconds'])} on {s.get('device_name')}")
    if s["earlier_ends"]:
        lines.append(f"  earlier ends kept (lengthened since): {', '.join(map(str, s['earlier_ends']))} iterations "
                     "(results-<N>it.*)")
    if "continue" in s:
        lines.append(f"  continue it{' (if nothing runs in it)' if s['state'] == 'unfinished' else ''}: "
                     f"{s['continue']}")
    if "lengthen" in s:
        lines.append(f"  lengthen it: {s['lengthen']}")
    return lines


def _quiet(s: dict) -> str:
    p = s["pace"]
    if p["iteration_s"] is None or s["state"] != "training":
        return ""
    usual = p["iteration_s"] + (p["val_s"] or 0.0)
    # a warm-up pace understates the next iteration, the first to run BELL and replay (3-4x longer on CIFAR-FS)
    patience = QUIET_AFTER * (WARMUP_UNDERSTATES if p["warmup_only"] else 1)
    if s["last_logged_ago_s"] > max(patience * usual, 60.0):
        return (f": quiet for {s['last_logged_ago_s'] / usual:.0f} times its pace (if it is not stopped in a debugger "
                "or starved of cores, it may hang: its own output says more)")
    return ""


def default_folders(root: Path = Path(".")) -> list[Path]:
    """The runs and pools under root/runs and root/pools (the commands' default folders), for a bare
    `fastfree status`."""
    found = [p for base in ("runs", "pools") if (root / base).is_dir() for p in sorted((root / base).iterdir())
             if p.is_dir() and (any((p / n).exists() for n in ("config.json", MANIFEST, PROGRESS)) or own_pools(p))]
    if not found:
        raise FastFreeError(f"no run or pool folder under {root / 'runs'} or {root / 'pools'} (the commands' "
                            "defaults): pass the folders, e.g. `fastfree status runs/demo`")
    return found


def run(args) -> list[dict]:
    """`fastfree status` (fastfree/cli.py holds its flags)."""
    out, failed = [], []
    folders = args.folders or default_folders()
    for folder in folders:
        try:
            s = status_of(Path(folder))
        except FastFreeError as e:
            failed.append(str(e))
            print(f"{folder}: error: {e}", flush=True)
            continue
        out.append(s)
        print("\n".join(status_lines(s)), flush=True)
    write_json(args.json, {"command": "status", "folders": out, "errors": failed,
                           "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if failed:
        raise FastFreeError(f"{len(failed)} of {len(folders)} folders could not be read (above)")
    return out


__all__ = ["command_to", "default_folders", "pace", "pool_status", "run_status", "status_lines", "time_left"]
