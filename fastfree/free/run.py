"""A FREE run on disk: resolved config, metrics (JSON lines), atomic checkpoints, resume,
meta-val model selection, grids of recovered tasks and the final results table.

    run_dir/
      config.json          everything needed to re-create the run
      input_space.json     the learner's image size and normalisation (commands/run_learner.py)
      metrics.jsonl        one line per iteration; an evaluation's line also holds meta-val's
                           accuracies, with each task's (val_per_task) and their protocol
      checkpoint.pt        the whole state after the last checkpointed iteration (atomic)
      best_learner.pt      the meta-learners selected on meta-val, per shot count (free/selection.py)
      learners/iter_XXXXX.pt the meta-learner of every meta-val evaluation, for later analysis (free/kept.py)
      grids/iter_XXXXX.png recovered tasks (one row per teacher)
      results.md / .json   meta-test of the selected and the last meta-learner, and Random
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fastfree.data.domains import MultiDomainData
from fastfree.data.split import FewShotDataset
from fastfree.errors import FastFreeError
from fastfree.free.atomic import atomic_torch_save, atomic_write_png, atomic_write_text
from fastfree.free.config import FreeConfig
from fastfree.free.five import RecoveredTask
from fastfree.free.kept import drop_kept_after, keep_learner, kept_path, load_kept
from fastfree.free.selection import BEST, for_shots, improved_shots, is_legacy, load_selection, read_selected, \
    selected_label, write_selected
from fastfree.free.trainer import FreeState, free_iteration, init_state
from fastfree.graceful_stop import StoppedBySignal, StopRequest
from fastfree.metatest.initializations import Initialization
from fastfree.metatest.domains import metatest_data
from fastfree.metatest.protocol import MetaTestConfig, ShotResult, task_protocol
from fastfree.read_back import CHANGED, load_torch
from fastfree.write_failure import writing

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def load_checkpoint(run_dir: Path) -> dict:
    """The run's checkpoint, read on the CPU (its RNG states must stay there: a CPU generator refuses a
    CUDA state; every other part moves its own tensors to the run's device when it loads)."""
    return load_torch(run_dir / CHECKPOINT, f"The run cannot continue from it: restore {run_dir} from a copy, or start "
                      "the run again in another --run-dir. Its selected and kept learners (best_learner.pt, "
                      f"learners/) can still be meta-tested: `fastfree eval --method learner --run {run_dir} "
                      "--learner selected` (or every)")


def completed_iterations(run_dir: Path) -> int:
    """How many iterations the run in run_dir has checkpointed (0 when it has no checkpoint)."""
    if not (run_dir / CHECKPOINT).is_file():
        return 0
    try:  # memory-mapped: only the record's pickle is read, not its tensors (264 MB on CIFAR-FS), which the
        # resume's restore reads and checks whole
        return int(torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)["iteration"])
    except Exception:  # a damaged file (whatever torch raises for it): said as the restore says it
        return int(load_checkpoint(run_dir)["iteration"])


def metric_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records, one per iteration (0-based "iteration"), in order. A last line torn by a
    kill (or a full disk) is left out, as --resume drops it; a damaged line before it is refused."""
    path = run_dir / METRICS
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError as e:
            if number == len(lines):  # torn by a kill: the iteration it began to record is not checkpointed
                break
            raise FastFreeError(f"{path} is damaged (line {number} is not valid JSON: {e}); {CHANGED}. Restore it "
                                "from a copy of the run") from None
    return records


def meta_val_log(run_dir: Path) -> list[dict]:
    """Every meta-val evaluation metrics.jsonl records, in order: {"iteration": N (1-based, as the
    labels count), "val": {shots: {"mean", "ci95"}}}, the curve model selection read."""
    return [{"iteration": m["iteration"] + 1,  # metrics.jsonl counts iterations from 0
             "val": {s: {"mean": v[0], "ci95": v[1]} for s, v in m["val"].items()}}
            for m in metric_records(run_dir) if "val" in m]


def meta_val_per_task(run_dir: Path) -> dict[int, dict]:
    """{iteration (1-based): {"protocol": task_protocol, "accuracies": {shots: [per task]}}} of every
    meta-val evaluation that stored its tasks' accuracies (runs from before 2026-12-02 did not)."""
    return {m["iteration"] + 1: {"protocol": m["val_protocol"], "accuracies": m["val_per_task"]}
            for m in metric_records(run_dir) if "val_per_task" in m}


def learner_init(learner: nn.Module) -> Initialization:
    """The meta-learner as a meta-test starting point (its BN already uses batch statistics).

    A copy: the meta-test moves its template to the protocol's dtype, which must not touch the
    learner being trained (a float64 run would silently continue in float32)."""
    return Initialization(copy.deepcopy(learner), shared={k: v.detach().clone() for k, v in learner.named_parameters()})


def save_grid(tasks: list[RecoveredTask], path: Path, per_class: int = 4) -> None:
    """One row per recovered task: `per_class` images of each of its classes, class by class (Fig. 7)."""
    rows = []
    for t in tasks:
        pick = torch.cat([torch.nonzero(t.labels == c).flatten()[:per_class] for c in torch.unique(t.labels)])
        imgs = t.images[pick].detach().float().clamp(0, 1).cpu()
        rows.append(torch.cat(list(imgs), dim=-1))  # [3, H, W * n]
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows]
    grid = (torch.cat(rows, dim=-2) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_png(path, grid)  # as every run file: a kill mid-write leaves the grid before, not a torn one


@dataclass
class RunContext:
    run_dir: Path
    cfg: FreeConfig
    dataset: FewShotDataset | MultiDomainData  # several domains: fastfree.data.domains
    teachers: list[nn.Module]
    teacher_classes: list[tuple[int, ...]]
    val_config: MetaTestConfig
    device: torch.device
    engine: object = None  # runs the phases: fastfree.engine.FastEngine, or None for the reference
    dtype: torch.dtype = torch.float32  # of the generator and meta-learner (float64: equivalence checks)


def is_evaluation(iteration: int, cfg: FreeConfig) -> bool:
    """Whether meta-val evaluates after `iteration` (1-based) iterations: every eval_every-th after the
    warm-up, and the last."""
    return iteration > cfg.warmup and (iteration % cfg.eval_every == 0 or iteration == cfg.iterations)


def _append_metrics(path: Path, record: dict) -> None:
    with writing(path), open(path, "a") as f:  # a line torn by a full disk is dropped on --resume
        f.write(json.dumps(record, default=float) + "\n")


def _truncate_metrics(path: Path, completed: int) -> None:
    """Drop lines of iterations after the checkpoint (they will run again on resume), and a line torn
    by a kill or a full disk (lines are appended before the checkpoint is written, so a torn one is
    always after it). Rewritten atomically: a kill here leaves the old file."""
    if not path.exists():
        return

    def before_checkpoint(line: str) -> bool:
        try:
            return json.loads(line).get("iteration", -1) < completed
        except ValueError:
            return False

    keep = [line for line in path.read_text().splitlines() if line.strip() and before_checkpoint(line)]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _roll_back_selection(run_dir: Path, state: FreeState) -> None:
    """Make best_learner.pt the checkpoint's picks again: an evaluation after the checkpoint may have
    written a pick that the resumed run never meets again (it may end sooner, or on a GPU measure
    otherwise). Each such pick goes back to the checkpoint's (its kept learner), or away if it had none."""
    path = run_dir / BEST
    if not path.is_file():
        return
    shots = dict(load_selection(path).get("shots", {}))
    later = [k for k, v in shots.items() if int(v["iteration"]) > state.iteration]
    if not later:
        return
    for key in later:
        earlier = state.best.get(key)
        kept = kept_path(run_dir, earlier["iteration"]) if earlier else None
        if kept is not None and kept.is_file():
            learner = load_kept(kept)["learner"]
            shots[key] = {"iteration": earlier["iteration"], "val": earlier["val"], "learner": learner}
        else:  # no pick before the checkpoint, or its learner was not kept (runs from before learners/)
            del shots[key]
            state.best = {k: v for k, v in state.best.items() if k != key}
    atomic_torch_save({"shots": shots}, path)


def _shot_table(results: list[ShotResult]) -> dict:
    return {str(r.shots): {"mean": r.mean, "ci95": r.ci95, "tasks": r.tasks} for r in results}


def refuse_cutting(run_dir: Path, iterations: int, done: int) -> None:
    """A run is lengthened, never cut (its later learners exist)."""
    if done > iterations:
        raise FastFreeError(f"--resume: {run_dir} has completed {done} iterations, more than --iterations "
                            f"{iterations}; pass --iterations {done} or more")


def default_run_dir(run_dir: str | None, preset: str) -> Path:
    """A train run's directory: --run-dir, else runs/<preset>."""
    return Path(run_dir or f"runs/{preset}")


def train_free(ctx: RunContext, resume: bool, progress: Callable[[dict], None] | None = None,
               stop_after: int | None = None, stop: StopRequest | None = None) -> FreeState:
    """Run (or continue) Algorithm 3 to ctx.cfg.iterations; returns the final state.

    `stop_after` ends the call after that many iterations in total (used to test resume). `stop`
    (fastfree.graceful_stop): once it is requested, the iteration under way is finished and
    checkpointed, and StoppedBySignal is raised; `--resume` continues from there.
    """
    cfg, run_dir = ctx.cfg, ctx.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state = init_state(cfg, ctx.dataset.image_size, len(ctx.teacher_classes[0]), ctx.device, ctx.dtype)
    ckpt = run_dir / CHECKPOINT
    if resume:
        if not ckpt.is_file():
            raise FastFreeError(f"--resume: no {CHECKPOINT} in {run_dir}; start the run without --resume")
        state.load_state_dict(load_checkpoint(run_dir))
        refuse_cutting(run_dir, cfg.iterations, state.iteration)
        if is_legacy(state.best):
            _upgrade_selection(ctx, state)
        else:
            _roll_back_selection(run_dir, state)
    elif ckpt.exists():
        raise FastFreeError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --run-dir")
    else:  # a fresh start: an earlier attempt here never checkpointed; its picks are not this run's
        (run_dir / BEST).unlink(missing_ok=True)
    _truncate_metrics(run_dir / METRICS, state.iteration)
    drop_kept_after(run_dir, state.iteration)
    end = cfg.iterations if stop_after is None else min(stop_after, cfg.iterations)
    while state.iteration < end:
        metrics, tasks = free_iteration(state, ctx.teachers, ctx.teacher_classes, ctx.dataset.normalization, cfg,
                                        ctx.engine)
        it = state.iteration  # iterations completed
        if it % cfg.grid_every == 0 or it == cfg.iterations:
            save_grid(tasks, run_dir / "grids" / f"iter_{it:05d}.png")
        if is_evaluation(it, cfg):
            started = time.perf_counter()
            results, per_domain = metatest_data(learner_init(state.learner), ctx.dataset, "val", ctx.val_config)
            metrics["val_s"] = time.perf_counter() - started  # beside iteration_s: `fastfree status`'s time left
            metrics["val"] = {str(r.shots): [r.mean, r.ci95] for r in results}
            # each task's accuracy and what decides the tasks: two runs' meta-val curves compared
            # task by task (profiling/compare_runs.py), not only side by side
            metrics["val_per_task"] = {str(r.shots): r.accuracies for r in results}
            metrics["val_protocol"] = task_protocol(ctx.val_config)
            keep_learner(run_dir, it, metrics["val"], state.learner.state_dict())
            if per_domain is not None:
                metrics["val_domains"] = {d: {str(r.shots): [r.mean, r.ci95] for r in rs}
                                          for d, rs in per_domain.items()}
            # model selection per shot count, over all domains' tasks together
            improved = improved_shots(state.best, {r.shots: r.mean for r in results}, it)
            if improved:
                write_selected(run_dir / BEST, state.learner.state_dict(), improved)
                state.best = {**state.best, **improved}
        _append_metrics(run_dir / METRICS, metrics)
        stopping = stop is not None and stop.requested  # read once: a signal may set it at any moment
        if it % cfg.checkpoint_every == 0 or it == end or stopping:
            atomic_torch_save(state.state_dict(), ckpt)
        if progress is not None:
            progress(metrics)
        if stopping:
            raise StoppedBySignal(stop.signum, it, cfg.iterations)
    return state


def _upgrade_selection(ctx: RunContext, state: FreeState) -> None:
    """A checkpoint from before per-shot selection kept one learner, picked on the mean over shot
    counts: measure that learner per shot count on meta-val, so later iterations compete with it
    fairly and nothing it was chosen for is lost."""
    old = read_selected(ctx.run_dir / BEST, ctx.device)
    if None not in old:  # the file was upgraded already (by a resume that ran no iteration): its picks stand
        state.best = {str(k): {"iteration": v.iteration, "val": v.val} for k, v in old.items()}
        return
    learner = copy.deepcopy(state.learner)
    learner.load_state_dict(old[None].learner)
    results, _ = metatest_data(learner_init(learner), ctx.dataset, "val", ctx.val_config)
    improved = improved_shots({}, {r.shots: r.mean for r in results}, old[None].iteration)
    write_selected(ctx.run_dir / BEST, learner.state_dict(), improved)
    state.best = improved


def selected_inits(template: nn.Module, selected: dict, shots: tuple[int, ...]) -> dict:
    """{shots: the meta-test start of the learner selected for that shot count}."""
    out = {}
    for s in shots:
        learner = copy.deepcopy(template)
        learner.load_state_dict(for_shots(selected, s).learner)
        out[s] = learner_init(learner)
    return out


def final_results(ctx: RunContext, state: FreeState, test_config: MetaTestConfig, random_init_fn) -> dict:
    """Meta-test the selected (best on meta-val, per shot count) and the last meta-learner, and
    Random, on the same meta-test tasks."""
    selected = read_selected(ctx.run_dir / BEST, ctx.device)
    # a shot count that meta-val did not measure has no selected learner: that cell stays empty
    shots = tuple(s for s in test_config.shots if s in selected or None in selected)
    measured = {"FREE (last)": metatest_data(learner_init(state.learner), ctx.dataset, "test", test_config)}
    if shots:
        # a pick that is the last learner (the same weights; a run whose meta-val peaked at its end) meets the
        # same tasks with the same weights: its cells are the last's, not measured twice
        last = state.learner.state_dict()
        again = tuple(s for s in shots if not _same_weights(for_shots(selected, s).learner, last))
        picked = metatest_data(selected_inits(state.learner, selected, again), ctx.dataset, "test",
                               replace(test_config, shots=again)) if again else ([], None)
        measured = {selected_label(selected): _merge_shots(picked, measured["FREE (last)"], shots), **measured}
    measured["Random"] = metatest_data(random_init_fn(), ctx.dataset, "test", test_config)
    entries, per_task = {}, {}
    for name, (results, per_domain) in measured.items():
        entries[name] = _shot_table(results)
        per_task[name] = {str(r.shots): r.accuracies for r in results}
        if per_domain is not None:
            entries[name]["domains"] = {d: _shot_table(rs) for d, rs in per_domain.items()}
    return {
        "results": entries,
        "data_recovery_gpu_hours": state.recovery_seconds / 3600.0,
        "data_recovery_seconds": state.recovery_seconds,
        # after warm-up, the iterations whose FIVE compiled or captured first (--compile, CUDA graphs)
        "data_recovery_setup_seconds": state.setup_seconds,
        "iterations": state.iteration,
        "warmup": ctx.cfg.warmup,
        "meta_val": meta_val_log(ctx.run_dir),
        # each task's accuracy, in the tasks' order (the same tasks for every method): paired
        # comparisons between methods or runs (profiling/compare_runs.py); the caller stores it apart
        "per_task": per_task,
    }


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].to(b[k].device), b[k]) for k in a)


def _merge_shots(own: tuple[list[ShotResult], dict | None], last: tuple[list[ShotResult], dict | None],
                 shots: tuple[int, ...]) -> tuple[list[ShotResult], dict | None]:
    """Results for `shots`, each from `own` where it was measured, else from `last` (per domain too)."""
    def pick(mine: list[ShotResult], lasts: list[ShotResult]) -> list[ShotResult]:
        by_shots = {r.shots: r for r in lasts} | {r.shots: r for r in mine}
        return [by_shots[s] for s in shots]

    if last[1] is None:
        return pick(own[0], last[0]), None
    return pick(own[0], last[0]), {d: pick((own[1] or {}).get(d, []), rs) for d, rs in last[1].items()}


def shot_cells(table: dict, shots) -> list[str]:
    """'mean +- ci95' per shot count of a {shots: {mean, ci95}} table ('-' where it has none)."""
    return [f"{table[str(s)]['mean']:.2f} +- {table[str(s)]['ci95']:.2f}" if str(s) in table else "-" for s in shots]


def _meta_val_lines(log: list[dict], shots: tuple[int, ...]) -> list[str]:
    """The meta-val curve model selection read (a shot count it did not measure: "-")."""
    if not log:
        return []
    lines = ["", "Meta-val (the selection above picked, per shot count, the best of these):", "",
             "| iteration | " + " | ".join(f"{s}-shot" for s in shots) + " |", "|---|" + "---|" * len(shots)]
    return lines + [f"| {e['iteration']} | " + " | ".join(shot_cells(e["val"], shots)) + " |" for e in log]


def results_markdown(summary: dict, device_name: str, shots: tuple[int, ...], ways: int,
                     replay_shots: int | None = None) -> str:
    """The results table; `replay_shots` (the run's replay tasks' shot count) notes the shot counts
    whose learners replayed tasks of another one (the paper runs each setting on its own)."""
    head = "| method | " + " | ".join(f"{ways}-way {s}-shot" for s in shots) + " |"
    lines = [head, "|---|" + "---|" * len(shots)]
    for name, res in summary["results"].items():
        lines.append(f"| {name} | " + " | ".join(shot_cells(res, shots)) + " |")
    domains = [d for res in summary["results"].values() for d in res.get("domains", {})]
    if domains:  # a multi-domain run: each domain's tasks on their own (the rows above: all tasks)
        lines += ["", "Per domain (each row's tasks are that domain's share of the meta-test tasks):", "",
                  "| method | domain | " + " | ".join(f"{ways}-way {s}-shot" for s in shots) + " |",
                  "|---|---|" + "---|" * len(shots)]
        for name, res in summary["results"].items():
            for d, per in res["domains"].items():
                lines.append(f"| {name} | {d} | " + " | ".join(shot_cells(per, shots)) + " |")
    other = [s for s in shots if replay_shots is not None and s != replay_shots]
    if other:
        lines += ["", f"{', '.join(f'{s}-shot' for s in other)}: the meta-learner replayed {replay_shots}-shot tasks; "
                      f"the paper runs each shot setting on its own (`fastfree train --shots K`)."]
    lines += _meta_val_lines(summary.get("meta_val") or [], shots)
    lines += [
        "",
        f"Data recovery (FIVE, synchronised, after {summary['warmup']} warm-up iterations): "
        f"{summary['data_recovery_seconds']:.1f} s = {summary['data_recovery_gpu_hours']:.4f} device-hours "
        f"on {device_name}, {summary['iterations']} iterations"
        + (f"; besides, {summary['data_recovery_setup_seconds']:.1f} s in the iterations whose FIVE first compiled "
           "or captured a CUDA graph (one-time costs)." if summary.get("data_recovery_setup_seconds") else "."),
    ]
    return "\n".join(lines) + "\n"
