"""Two or more `fastfree train` runs side by side: what differs, meta-val curves, meta-test, time.

Not a test: it reports. An ablation (BELL's rule, the shot protocol, a pool) is a pair of run
directories that differ in a few flags; this reads what each run wrote (config.json,
metrics.jsonl, results.json) and puts the answer in one table and one JSON, so a comparison is
assembled the same way every time instead of by hand:

    fastfree compare runs/a runs/b --what "the question" --json out.json
    (or python -m fastfree.profiling.compare_runs ..., the same)

Meta-val is the curve model selection read (never meta-test). Where both runs stored each
meta-test task's accuracy (results_per_task.json) on the same tasks, the FREE learners are also
compared task by task: a paired difference with its own interval. Meta-val is paired the same way
at every evaluation both runs made on the same tasks (metrics.jsonl's val_per_task; a run from
before those were stored gets them from `fastfree eval --run RUN --method learner --learner every
--split val --tasks N --per-task --json F`, passed as --val-every F, which must reproduce the run's
logged meta-val). With --average-seeds, runs that differ only in --seed are grouped and each group's
learners averaged per meta-test task, and per meta-val task at the evaluations all of them made
(seed_groups.py). Times: `iteration_seconds` sums
metrics.jsonl's per-iteration wall time over every call of the run (a resumed or lengthened run
included; meta-val evaluations excluded), `train_seconds` is the last call's wall time only.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from fastfree.commands.common import write_json
from fastfree.commands.every_learner import paired_difference
from fastfree.commands.run_data_record import read_digests
from fastfree.commands.train import PER_TASK, POOL_RECORD, kept_name
from fastfree.errors import FastFreeError
from fastfree.free.run import meta_val_log, meta_val_per_task, metric_records, shot_cells
from fastfree.metatest.protocol import MetaTestConfig, task_protocol
from fastfree.profiling.seed_groups import (LEARNERS, averaged_minus_first, averaged_val_minus_first, method,
                                            seed_groups, seeds_markdown)
from fastfree.read_back import read_json
from fastfree.settings_diff import settings_diff


def _read(path: Path) -> dict:
    """One of the JSON files a run wrote (a damaged one is refused, naming it)."""
    return read_json(path, "Restore it from a copy of the run")


def _ends(run_dir: Path) -> dict[int, tuple[Path, Path]]:
    """{iterations: (results file, per-task file)} of every meta-test the run holds: results.json at
    its last end, results-<N>it.json where `fastfree train --resume --iterations` lengthened it."""
    ends = {}
    for path in run_dir.glob("results-*it.json"):
        if m := re.fullmatch(r"results-(\d+)it\.json", path.name):
            ends[int(m.group(1))] = (path, run_dir / kept_name(PER_TASK, int(m.group(1))))
    last = run_dir / "results.json"
    if last.is_file():
        ends[int(_read(last)["iterations"])] = (last, run_dir / PER_TASK)
    return dict(sorted(ends.items()))


def read_run(run_dir: Path, at: int | None = None) -> dict:
    """What one run directory says about itself: its meta-test at `at` iterations (default: its
    last), and its meta-val curve and iteration time up to there."""
    config = run_dir / "config.json"
    if not config.is_file():
        raise FastFreeError(f"{run_dir}: no config.json, not a `fastfree train` run directory")
    lines = metric_records(run_dir)
    ends = _ends(run_dir)
    if at is not None and at not in ends:
        raise FastFreeError(f"{run_dir}: no meta-test at {at} iterations (it has: "
                            f"{', '.join(map(str, ends)) or 'none yet'}); pass one of those to --at")
    chosen = at if at is not None else (max(ends) if ends else None)
    done = _read(ends[chosen][0]) if chosen is not None else {}
    per_task = ends[chosen][1] if chosen is not None else None
    upto = at if at is not None else len(lines)
    return {
        "run_dir": str(run_dir),
        "config": _read(config),
        "iterations_done": min(len(lines), upto),
        "iteration_seconds": sum(m.get("iteration_s", 0.0) for m in lines if m["iteration"] < upto),
        "meta_val": [e for e in meta_val_log(run_dir) if e["iteration"] <= upto],
        "val_per_task": {i: v for i, v in meta_val_per_task(run_dir).items() if i <= upto},
        "results": done.get("results"),
        "per_task": _read(per_task) if per_task is not None and per_task.is_file() else None,
        **{k: done[k] for k in ("iterations", "train_seconds", "data_recovery_seconds", "device_name", "torch",
                                "threads", "malloc", "date") if k in done},
        # the meta-tests before the chosen one (a lengthened run's earlier ends)
        "earlier_ends": {n: _read(r).get("results") for n, (r, _) in ends.items()
                         if chosen is not None and n < chosen},
    }


# how far a re-measured meta-val mean may sit from the logged one (points): room for a few queries
# whose prediction flips under another thread count's rounding (on CIFAR-FS's 200 x 75 queries one
# flip moves the mean 0.007 points); other tasks miss by far more
REPRODUCED_WITHIN = 0.05


def attach_val_evaluation(run: dict, evaluation: dict, source: str = "--val-every") -> None:
    """Give a run from before meta-val's tasks were stored its per-task meta-val, from `fastfree eval
    --run RUN --method learner --learner every --split val --per-task --json` (`evaluation`). Only
    if it reproduces the run's logged meta-val (the proof it met the same tasks); iterations the
    run stored itself are kept."""
    if (evaluation.get("learner"), evaluation.get("split")) != ("every", "val") or not evaluation.get(
            "per_task_accuracy"):
        raise FastFreeError(f"{source}: not a per-task meta-val of every learner; write one with `fastfree eval "
                            f"--run RUN --method learner --learner every --split val --tasks N --per-task --json F`")
    logged = {e["iteration"]: e["val"] for e in run["meta_val"]}
    config = evaluation["config"]
    protocol = task_protocol(MetaTestConfig(**{**config, "shots": tuple(config["shots"])}))
    for row in evaluation["evaluations"]:
        it = row["iteration"]
        if it not in logged or it in run["val_per_task"]:
            continue
        for shots, (mean, _) in row["val"].items():
            if shots in logged[it] and abs(mean - logged[it][shots]["mean"]) > REPRODUCED_WITHIN:
                raise FastFreeError(
                    f"{source}: iteration {it} {shots}-shot meta-val measured {mean:.2f}, the run logged "
                    f"{logged[it][shots]['mean']:.2f}: not the tasks of the run's meta-val; evaluate with the "
                    f"run's --val-tasks ({protocol['tasks']} given) and its default task seed")
        run["val_per_task"][it] = {"protocol": protocol,
                                   "accuracies": evaluation["per_task_accuracy"][str(it)]}


def _same_data(a: dict, b: dict) -> bool:
    """By the data's digests (data.json) where both runs recorded them: the same data moved, or named by
    an environment variable in one run and by --data-root in the other, is the same; else as configured."""
    digests = [read_digests(r["run_dir"]) for r in (a, b)]
    if None not in digests:
        return digests[0] == digests[1]
    return all(a["config"].get(k) == b["config"].get(k) for k in ("data", "domains"))


def paired_meta_val(base: dict, other: dict) -> dict[int, dict]:
    """`other`'s meta-val minus `base`'s, task by task, at every evaluation both stored on the same
    tasks (the same data and task protocol): {iteration: {shots: {mean, ci95, tasks}}}, in points."""
    out = {}
    same_data = _same_data(base, other)
    for it in sorted(set(base["val_per_task"]) & set(other["val_per_task"])):
        a, b = base["val_per_task"][it], other["val_per_task"][it]
        if not same_data or a["protocol"] != b["protocol"]:
            continue
        out[it] = {s: paired_difference(b["accuracies"][s], a["accuracies"][s])
                   for s in sorted(set(a["accuracies"]) & set(b["accuracies"]), key=int)}
    return out


def _teachers(run_dir: str | Path) -> list[str] | None:
    """The weights digests of a run's pools (pools.json), None for a run from before it."""
    path = Path(run_dir) / POOL_RECORD
    return [p.get("weights_sha256") for p in _read(path)["pools"]] if path.is_file() else None


def normalized_configs(runs: list[dict], at: int | None = None) -> list[dict]:
    """The runs' configurations, each after the first made comparable with the first's (with `at`,
    --iterations is left out: lengthened runs compared at one length). Pools are compared by their
    weights where both runs recorded them: the same teachers given by another path (or as a run's own
    pool) are the same; another pool at the same path (pretrained again) is not. Data likewise, by
    its digests."""
    configs = [json.loads(json.dumps(r["config"])) for r in runs]
    if at is not None:
        for c in configs:
            c.get("free", {}).pop("iterations", None)
    first = _teachers(runs[0]["run_dir"])
    for r, c in zip(runs[1:], configs[1:]):
        if _same_data(runs[0], r):  # the same data by digest: its folder is no difference
            for key in ("data", "domains"):
                if key in c and key in configs[0]:
                    c[key] = configs[0][key]
        teachers = _teachers(r["run_dir"])
        if first is None or teachers is None or None in first + teachers:  # unknown: as configured
            continue
        if teachers == first:
            c["pool"] = configs[0].get("pool")
        elif c.get("pool") == configs[0].get("pool"):
            c["pool"] = (f"{c.get('pool') or 'its own pool'} (other teachers: weights sha256 "
                         f"{', '.join(t[:12] for t in teachers)})")
    return configs


def differences(runs: list[dict], at: int | None = None) -> list[str]:
    """For every run after the first: its settings that differ from the first run's (as
    normalized_configs compares them), in words."""
    configs = normalized_configs(runs, at)
    return [settings_diff(configs[0], c) if c != configs[0] else "the same configuration" for c in configs[1:]]


def paired_differences(base: dict, other: dict) -> dict | None:
    """Each FREE learner of `other` minus `base`'s, task by task: {method: {shots: {mean, ci95,
    tasks}}} in points. The meta-test draws the same tasks in every run of a data set and seed, so
    the difference's interval is much narrower than the two runs' own ones side by side. Paired only
    when Random, the same seeded start in both, scored exactly alike on every task (the proof the
    tasks are the same); None otherwise."""
    if base.get("Random") != other.get("Random") or not base.get("Random"):
        return None
    out = {}
    for prefix, label in LEARNERS:
        a, b = method(base, prefix), method(other, prefix)
        if a is None or b is None:
            continue
        out[label] = {
            s: paired_difference(b[s], a[s])
            for s in sorted(set(a) & set(b), key=int) if len(a[s]) == len(b[s])}
    return out


def meta_val_table(names: list[str], runs: list[dict], shots: list[str]) -> list[str]:
    """Rows: the iterations any run evaluated; columns: run x shot count ("-": not evaluated there)."""
    curves = [{e["iteration"]: e["val"] for e in r["meta_val"]} for r in runs]
    iterations = sorted({i for c in curves for i in c})
    head = "| iteration | " + " | ".join(f"{n} {s}-shot" for n in names for s in shots) + " |"
    rows = [head, "|---|" + "---|" * (len(names) * len(shots))]
    for i in iterations:
        cells = [f"{c[i][s]['mean']:.2f}" if i in c and s in c[i] else "-" for c in curves for s in shots]
        rows.append(f"| {i} | " + " | ".join(cells) + " |")
    return rows


def meta_test_table(names: list[str], runs: list[dict], shots: list[str]) -> list[str]:
    rows = ["| run | method | " + " | ".join(f"{s}-shot" for s in shots) + " |", "|---|---|" + "---|" * len(shots)]
    for name, r in zip(names, runs):
        rows_of_run = [(f"at {n} iterations: {m}", t) for n, res in sorted(r["earlier_ends"].items())
                       for m, t in (res or {}).items()]
        for label, table in rows_of_run + list((r["results"] or {}).items()):
            rows.append(f"| {name} | {label} | " + " | ".join(shot_cells(table, shots)) + " |")
    return rows


def _read_evaluation(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FastFreeError(f"--val-every {path}: not a readable JSON file ({e}); write one with `fastfree eval --run "
                            f"RUN --method learner --learner every --split val --tasks N --per-task --json F`") from e


def _evaluation_for(run_dirs: list[Path], path: Path, evaluation: dict) -> int:
    """Which run an `eval --learner every` JSON measured: its "run" by path, else by folder name."""
    named = Path(evaluation.get("run", ""))
    hits = [i for i, d in enumerate(run_dirs) if d.resolve() == named.resolve()] or \
           [i for i, d in enumerate(run_dirs) if d.name == named.name]
    if len(hits) != 1:
        raise FastFreeError(f"--val-every {path}: it measured run {named}, which is not exactly one of the runs "
                            f"compared ({', '.join(map(str, run_dirs))})")
    return hits[0]


def meta_val_pairs_markdown(name: str, base_name: str, table: dict[int, dict], shots: list[str]) -> list[str]:
    rows = ["", f"{name} - {base_name}, meta-val task by task on the same tasks (points, 95% interval):", "",
            "| iteration | " + " | ".join(f"{s}-shot" for s in shots) + " |", "|---|" + "---|" * len(shots)]
    for it, t in table.items():
        rows.append(f"| {it} | " + " | ".join(f"{t[s]['mean']:+.2f} +- {t[s]['ci95']:.2f}" if s in t else "-"
                                            for s in shots) + " |")
    return rows


def unique_names(run_dirs: list[Path]) -> list[str]:
    """The runs' folder names, with as many parent folders as make them distinct (exp1/seed0, exp2/seed0):
    the comparison is keyed by name, and a repeated one overwrote the other run."""
    parts = [Path(p).resolve().parts for p in run_dirs]
    for depth in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    raise FastFreeError("a run directory is named twice: compare different runs")


def compare(run_dirs: list[Path], names: list[str] | None = None, at: int | None = None,
            val_every: list[Path] | None = None, average_seeds: bool = False) -> tuple[dict, str]:
    """The comparison as JSON and as markdown (`at`: every run as it was at that many iterations;
    `val_every`: per-task meta-val of runs that did not store it, see attach_val_evaluation;
    `average_seeds`: also runs that differ only in --seed grouped and averaged per task, see
    seed_groups)."""
    if len(run_dirs) < 2:
        raise FastFreeError("compare at least two run directories")
    if names and len(set(names)) != len(names):
        raise FastFreeError(f"--name given twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))}): "
                            "each run needs its own")
    names = names or unique_names(run_dirs)
    if len(names) != len(run_dirs):
        raise FastFreeError(f"{len(names)} --name for {len(run_dirs)} runs: give one per run, or none")
    runs = [read_run(p, at) for p in run_dirs]
    for path in val_every or []:
        evaluation = _read_evaluation(path)
        attach_val_evaluation(runs[_evaluation_for(run_dirs, path, evaluation)], evaluation, f"--val-every {path}")
    shots = sorted({s for r in runs for e in r["meta_val"] for s in e["val"]}
                   | {s for r in runs for t in (r["results"] or {}).values() for s in t if s.isdigit()}, key=int)
    diff = differences(runs, at)
    md = [f"- {n}: {d}" for n, d in zip(names[1:], diff)]
    md += ["", "Meta-val (model selection reads these):", "", *meta_val_table(names, runs, shots)]
    if any(r["results"] or r["earlier_ends"] for r in runs):
        md += ["", "Meta-test:", "", *meta_test_table(names, runs, shots)]
    val_paired = {name: paired_meta_val(runs[0], r) for name, r in zip(names[1:], runs[1:])}
    for name, table in val_paired.items():
        if table:
            md += meta_val_pairs_markdown(name, names[0], table, shots)
    paired = {}
    for name, r in zip(names[1:], runs[1:]):
        if runs[0]["per_task"] and r["per_task"]:
            paired[name] = paired_differences(runs[0]["per_task"], r["per_task"])
    for name, diff_table in paired.items():
        if diff_table is None:
            md += ["", f"{name} - {names[0]}: not paired (Random scored differently: not the same meta-test tasks, "
                       "or the same tasks computed with other rounding: another machine, thread count or fastfree "
                       "version)"]
            continue
        md += ["", f"{name} - {names[0]}, task by task on the same meta-test tasks (points, 95% interval):", ""]
        md += [f"- {m}: " + ", ".join(f"{s}-shot {v['mean']:+.2f} +- {v['ci95']:.2f}" for s, v in t.items())
               for m, t in diff_table.items()]
    md += ["", "| run | iterations | iteration seconds (all calls) | data recovery s |", "|---|---|---|---|"]
    md += [f"| {n} | {r['iterations_done']} | {r['iteration_seconds']:.0f} | "
           + (f"{r['data_recovery_seconds']:.0f} |" if "data_recovery_seconds" in r else "- |")
           for n, r in zip(names, runs)]
    payload = {"runs": dict(zip(names, runs)), "differences_from_first": dict(zip(names[1:], diff)),
               "paired_minus_first": paired, "meta_val_paired_minus_first": val_paired}
    if average_seeds:
        configs = normalized_configs(runs, at)
        groups = seed_groups(configs, names)
        averaged = averaged_minus_first([r["per_task"] for r in runs], groups)
        val_averaged = averaged_val_minus_first([r["val_per_task"] for r in runs], groups,
                                                [True] + [_same_data(runs[0], r) for r in runs[1:]])
        md += seeds_markdown(names, configs, groups, averaged, val_averaged)
        payload["seed_groups"] = [[names[i] for i in group] for group in groups]
        payload["seeds_averaged_minus_first"] = averaged if isinstance(averaged, str) else {
            f"group {g + 1}": table for g, table in averaged.items()}
        payload["seeds_meta_val_averaged_minus_first"] = {f"group {g + 1}": table for g, table in val_averaged.items()}
    return payload, "\n".join(md) + "\n"


def run(args) -> dict:
    """`fastfree compare` (fastfree/cli.py holds its flags)."""
    payload, md = compare(args.runs, args.name, args.at, args.val_every, args.average_seeds)
    print(md, end="")
    write_json(args.json, {"what": args.what, "at_iterations": args.at, **payload})
    return payload


def main(argv: list[str] | None = None) -> int:
    """`python -m fastfree.profiling.compare_runs ...`, the same as `fastfree compare ...`."""
    from fastfree.cli import main as cli_main

    return cli_main(["compare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
