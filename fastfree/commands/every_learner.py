"""`fastfree eval --run RUN --method learner --learner every`: meta-test the meta-learner of every
meta-val evaluation (free/kept.py) on the same tasks.

It measures what model selection does to the reported number. The published code reports the
best of its evaluations on the meta-test split (for the paper's Table 2: the best of about 48),
which picks on the tasks it reports, so it is optimistic; fastfree selects on meta-val. Both are
read off one table: per shot count, the best learner on the split tested ("best on meta-test":
the published code's selection), the learner meta-val selected, and the last, each with its
meta-test accuracy on the same tasks. Because every learner meets the same tasks, the gap between
two of them is measured per task (a paired difference), whose interval is far narrower than the
two accuracies' own. It describes these tasks: "best" was picked on them, so its gain over any other
learner is never negative and its interval is too narrow as a test (of ~48 learners equal in
expectation, the best's interval excludes zero far more often than 5 % of the time). Whether a
pick generalises needs fresh tasks (another --seed).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fastfree.commands.common import progress_bar, run_metadata, write_json
from fastfree.commands.every_learner_progress import EveryLearnerProgress, state_digest
from fastfree.commands.run_data_record import data_digests
from fastfree.commands.run_learner import load_run_learner
from fastfree.free.learner_file import learner_module
from fastfree.device import resolve_metatest_engine
from fastfree.errors import FastFreeError
from fastfree.free.kept import read_kept
from fastfree.free.run import learner_init, meta_val_log
from fastfree.free.selection import BEST, for_shots, read_selected
from fastfree.metatest.domains import metatest_data
from fastfree.metatest.protocol import confidence_interval, task_protocol


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean and 95 % interval of a - b over the same tasks, in the accuracies' unit (pure)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a paired difference needs the same non-empty tasks, got {len(a)} and {len(b)}")
    mean, ci = confidence_interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return {"mean": mean, "ci95": ci, "tasks": len(a)}


def summarize(rows: list[dict], split: str, selected_iterations: dict[str, int],
              per_task: dict[int, dict[str, list[float]]] | None = None) -> dict:
    """Per shot count: the best row on `split`, meta-val's pick and the last row (pure).

    rows: [{"iteration", "logged_val": {shots: [mean, ci]}, split: {shots: [mean, ci]}}], by iteration.
    per_task: {iteration: {shots: [accuracy per task]}} on the same tasks; with it, the best's gain
    over meta-val's pick and over the last learner is given as a paired difference.
    """
    out = {}
    by_it = {r["iteration"]: r for r in rows}
    for shots in rows[0][split]:
        def at(row):
            mean, ci = row[split][shots]
            return {"iteration": row["iteration"], "mean": mean, "ci95": ci}

        best = max(rows, key=lambda r: r[split][shots][0])  # the first of equal maxima, as selection keeps
        pick = selected_iterations.get(shots)
        out[shots] = {
            f"best_on_{split}": at(best),
            "selected_on_val": at(by_it[pick]) if pick in by_it else ({"iteration": pick} if pick else None),
            "last_evaluated": at(rows[-1]),  # the run's last learner only if it ended on an evaluation
            "evaluations": len(rows),
        }
        if per_task is not None:
            def gain_over(other):  # None where the other learner was not tested
                return (paired_difference(per_task[best["iteration"]][shots], per_task[other][shots])
                        if other in per_task else None)

            out[shots]["best_minus_selected"] = gain_over(pick)
            out[shots]["best_minus_last"] = gain_over(rows[-1]["iteration"])
    return out


def _logged_evaluations(run_dir: Path) -> list[int]:
    """The iterations whose meta-val evaluation metrics.jsonl records."""
    return [e["iteration"] for e in meta_val_log(run_dir)]


def _selected_iterations(run_dir: Path, shots: tuple[int, ...]) -> dict[str, int]:
    """Meta-val's pick per shot count (for_shots also reads a legacy file's single pick)."""
    selected = read_selected(run_dir / BEST)
    return {str(s): for_shots(selected, s).iteration for s in shots if s in selected or None in selected}


# bump when what a meta-test measures changes (the sampler, the adaptation, its rounding): earlier kept
# results then stop matching. 2: CPU adaptation channels-last (fastfree/layout.py), other rounding
RESULTS_FORMAT = 2


def results_key(data, args, cfg, engine: str, device: torch.device) -> dict:
    """What decides every learner's accuracies beside its weights, for the kept progress: the tasks, the
    data as decoded here (its digest: the same data moved is the same, a decoder that reads it otherwise is
    not), and what changes the rounding (dtype, engine, chunk, device, threads, torch): a result is
    reused only where it would come out the same."""
    return {"format": RESULTS_FORMAT, "tasks": task_protocol(cfg), "split": args.split, "data": data_digests(data),
            "dtype": args.dtype, "engine": engine, "chunk": cfg.chunk, "device": run_metadata(device)["device_name"],
            "threads": torch.get_num_threads() if device.type == "cpu" else None, "torch": torch.__version__}


def run_every_learner(args, cfg_of, device: torch.device, dtype: torch.dtype) -> dict:
    """`cfg_of(preset_metatest_config)` applies the command's protocol flags (evaluate.metatest_config)."""
    if args.data is not None:
        raise FastFreeError("--learner every meta-tests on the run's own data: drop --data (or test one learner on "
                            "another data set with --learner selected|last)")
    run_dir = Path(args.run)
    target = load_run_learner(run_dir, None, device, dtype, args.data_root, args.decoder)  # the run's data, its shape
    cfg = cfg_of(target.protocol())
    kept = read_kept(run_dir, device)
    missing = sorted(set(_logged_evaluations(run_dir)) - {k.iteration for k in kept})
    if missing:  # e.g. a run resumed from before learners were kept: the best is over fewer evaluations
        print(f"note: {len(missing)} meta-val evaluations have no kept learner (iterations "
              f"{', '.join(map(str, missing))}): the summary covers the {len(kept)} kept ones", flush=True)
    picks = _selected_iterations(run_dir, cfg.shots)
    engine = resolve_metatest_engine(cfg.engine, device)
    progress = EveryLearnerProgress(run_dir, results_key(target.data, args, cfg, engine, device))
    digests = {k.iteration: state_digest(k.learner) for k in kept}
    earlier = [k.iteration for k in kept if progress.get(k.iteration, digests[k.iteration]) is not None]
    if earlier:
        print(f"continuing: {len(earlier)} of the {len(kept)} learners were meta-tested on these tasks before "
              f"(iterations {', '.join(map(str, earlier))}; {progress.path})", flush=True)
    rows, per_task = [], {}
    t0 = time.perf_counter()
    with progress_bar(total=cfg.tasks * len(cfg.shots) * (len(kept) - len(earlier)),
                      desc=f"meta-test {len(kept) - len(earlier)} learners", unit="task") as bar:
        for k in kept:
            results = progress.get(k.iteration, digests[k.iteration])
            if results is None:
                init = learner_init(learner_module(k.learner, target.width, target.image_size, device, dtype))
                results, _ = metatest_data(init, target.data, args.split, cfg, dtype, bar.update)
                progress.add(k.iteration, digests[k.iteration], results)
            # logged_val: what the run's meta-val measured when it kept this learner (apart from the
            # split measured now, which may be meta-val again: --split val)
            rows.append({"iteration": k.iteration, "logged_val": k.val,
                         args.split: {str(r.shots): [r.mean, r.ci95] for r in results}})
            per_task[k.iteration] = {str(r.shots): r.accuracies for r in results}
    seconds = time.perf_counter() - t0
    summary = summarize(rows, args.split, picks, per_task)
    payload = {
        "command": "eval",
        "method": "learner",
        "learner": "every",
        "run": str(run_dir),
        "preset": target.preset,
        "dataset": target.data.name,
        "split": args.split,
        "config": cfg.__dict__,
        "engine": engine,
        "dtype": args.dtype,
        "evaluations": rows,
        "evaluations_without_learner": missing,
        "summary": summary,
        "per_task_accuracy": {str(it): acc for it, acc in per_task.items()} if args.per_task else None,
        "seconds": seconds,  # this invocation's: learners tested before are read back, not timed again
        "learners_tested_before": earlier,
        "progress_file": None if progress.unwritable else str(progress.path),
        **run_metadata(device),
    }
    _print(rows, summary, args.split, cfg.ways, seconds, payload["device_name"], len(earlier))
    write_json(args.json, payload)
    return payload


def _print(rows: list[dict], summary: dict, split: str, ways: int, seconds: float, device_name: str,
           read_back: int) -> None:
    shots = list(rows[0][split])
    timing = f"{len(rows) - read_back} tested in {seconds:.1f} s on {device_name}" + (
        f", {read_back} read back from an earlier call" if read_back else "")
    print(f"{len(rows)} meta-learners, {ways}-way, on the same meta-{split} tasks ({timing}):")
    print("iteration | " + " | ".join(f"logged val {s}-shot" for s in shots) + " | "
          + " | ".join(f"{split} {s}-shot" for s in shots))
    for r in rows:
        val = [f"{r['logged_val'][s][0]:.2f}" if s in r["logged_val"] else "-" for s in shots]
        print(f"{r['iteration']:>9} | " + " | ".join(val) + " | "
              + " | ".join(f"{r[split][s][0]:.2f} +- {r[split][s][1]:.2f}" for s in shots))
    for s, v in summary.items():
        best, sel, last = v[f"best_on_{split}"], v["selected_on_val"], v["last_evaluated"]
        sel_text = (f"{sel['mean']:.2f} +- {sel['ci95']:.2f} (iteration {sel['iteration']})" if sel and "mean" in sel
                    else f"iteration {sel['iteration']}, not among the kept learners" if sel
                    else "none (meta-val did not measure this shot count)")
        print(f"{s}-shot: best on meta-{split} {best['mean']:.2f} +- {best['ci95']:.2f} (iteration "
              f"{best['iteration']}; the published code's selection, optimistic), selected on meta-val {sel_text}, "
              f"last evaluated {last['mean']:.2f} +- {last['ci95']:.2f} (iteration {last['iteration']})")
        for name, key in (("meta-val's pick", "best_minus_selected"), ("the last", "best_minus_last")):
            d = v.get(key)
            if d is not None:
                print(f"  the best's gain over {name}, task by task: {d['mean']:+.2f} +- {d['ci95']:.2f} "
                      f"({d['tasks']} tasks)")


__all__ = ["paired_difference", "run_every_learner", "summarize"]
