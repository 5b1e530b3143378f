"""`fastfree compare --average-seeds`: runs that differ only in their training seed, grouped, and each
group's learners averaged task by task before the groups are compared.

One seed is one draw: two FREE runs of the same setting and another --seed differ by a point or more
on CIFAR-FS's meta-test. An ablation over several seeds (FREE and hard labels, each with seeds 42 and
7) is read as each setting's learners averaged per meta-test task over its seeds, minus the first
setting's average, with a paired 95% interval: the seeds' runs meet the same meta-test tasks (the task
draw does not depend on --seed), so the average is taken task by task, not of the runs' means. Meta-val
likewise, at every iteration where all runs of both groups evaluated the same tasks.
"""

from __future__ import annotations

import json
import statistics

from fastfree.commands.every_learner import paired_difference
from fastfree.errors import FastFreeError
from fastfree.settings_diff import settings_diff

# results_per_task.json's learners, by name prefix ("FREE (selected" names its pick's iteration) and
# label: the learners compare pairs across runs (shared with compare_runs.paired_differences)
LEARNERS = (("FREE (selected", "FREE (selected)"), ("FREE (last)", "FREE (last)"))


def method(per_task: dict, prefix: str) -> dict | None:
    """The method of a results_per_task.json table whose name starts with prefix."""
    return next((v for k, v in per_task.items() if k.startswith(prefix)), None)


def _seed(config: dict) -> int | None:
    return config.get("free", {}).get("seed")


def _without_seed(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    config.get("free", {}).pop("seed", None)
    return config


def seed_groups(configs: list[dict], names: list[str]) -> list[list[int]]:
    """Indices of the runs grouped by their configuration without free.seed (configs as
    compare_runs.normalized_configs makes them comparable), in order of first appearance: the first
    group holds the first run. Two runs of one setting and one seed are refused: a rerun is not
    another seed."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        group = groups.setdefault(json.dumps(_without_seed(config), sort_keys=True), [])
        twin = next((j for j in group if _seed(configs[j]) == _seed(config)), None)
        if twin is not None:
            raise FastFreeError(f"--average-seeds: {names[twin]} and {names[i]} have the same settings and seed "
                                f"({_seed(config)}): a rerun is not another seed; compare one of them")
        group.append(i)
    return list(groups.values())


def _per_task_mean(tables: list[dict], prefix: str, shots: str) -> list[float] | None:
    """Each task's accuracy averaged over the runs (None where a run lacks the learner or shot count)."""
    columns = []
    for table in tables:
        learner = method(table, prefix)
        if learner is None or shots not in learner:
            return None
        columns.append(learner[shots])
    return _task_means(columns)


def _task_means(columns: list[list[float]]) -> list[float] | None:
    """Each task's accuracy averaged over the runs' columns (None where the runs hold other task counts)."""
    if len({len(c) for c in columns}) != 1:
        return None
    return [statistics.fmean(task) for task in zip(*columns)]


def _minus(mine: list[float], base: list[float]) -> dict:
    """One cell of a table: the paired difference and both sides' means."""
    return {**paired_difference(mine, base), "first_mean": statistics.fmean(base), "group_mean": statistics.fmean(mine)}


def averaged_minus_first(per_task: list[dict | None], groups: list[list[int]]) -> dict | str:
    """For every group after the first: its learners averaged per task over its runs, minus the first
    group's, {group index: {learner: {shots: {mean, ci95, tasks, first_mean, group_mean}}}}; or why
    not (a string): every run needs results_per_task.json, and Random must score alike on every task
    in all of them (the proof they met the same tasks)."""
    if any(t is None for t in per_task):
        return "a run has no results_per_task.json (no meta-test yet, or from before runs stored it)"
    if len({json.dumps(t.get("Random"), sort_keys=True) for t in per_task}) != 1 or not per_task[0].get("Random"):
        return "Random scored differently: not the same meta-test tasks in every run"
    shots = sorted(per_task[0]["Random"], key=int)
    out = {}
    for g, group in enumerate(groups[1:], 1):
        out[g] = {}
        for prefix, label in LEARNERS:
            cells = {}
            for s in shots:
                base = _per_task_mean([per_task[i] for i in groups[0]], prefix, s)
                mine = _per_task_mean([per_task[i] for i in group], prefix, s)
                if base is not None and mine is not None and len(base) == len(mine):
                    cells[s] = _minus(mine, base)
            if cells:
                out[g][label] = cells
    return out


def averaged_val_minus_first(val_per_task: list[dict], groups: list[list[int]],
                             same_tasks: list[bool]) -> dict[int, dict[int, dict]]:
    """Meta-val as averaged_minus_first does meta-test: {group index: {iteration: {shots: {mean, ci95,
    tasks, first_mean, group_mean}}}}, at the iterations where every run of the first group and of that
    group stored its per-task meta-val under one task protocol. `val_per_task`: each run's
    {iteration: {"protocol", "accuracies"}}; `same_tasks[i]`: run i's data is the first run's (by
    digest), the protocol alone does not say that."""
    out = {}
    for g, group in enumerate(groups[1:], 1):
        members = groups[0] + group
        table = {}
        if all(same_tasks[i] for i in members):
            for it in sorted(set.intersection(*(set(val_per_task[i]) for i in members))):
                stored = [val_per_task[i][it] for i in members]
                if any(v["protocol"] != stored[0]["protocol"] for v in stored):
                    continue
                shots = sorted(set.intersection(*(set(v["accuracies"]) for v in stored)), key=int)
                cells = {}
                for s in shots:
                    base, mine = (_task_means([val_per_task[i][it]["accuracies"][s] for i in part])
                                  for part in (groups[0], group))
                    if base is not None and mine is not None and len(base) == len(mine):
                        cells[s] = _minus(mine, base)
                if cells:
                    table[it] = cells
        out[g] = table
    return out


SEEDS_HEADING = ("Seeds averaged task by task (runs that differ only in --seed grouped; each group's learners "
                 "averaged per meta-test task over its seeds, minus the first group's; points, 95% interval):")


def seeds_markdown(names: list[str], configs: list[dict], groups: list[list[int]],
                   averaged: dict | str, val_averaged: dict[int, dict] | None = None,
                   heading: str = SEEDS_HEADING) -> list[str]:
    """The groups and their averaged differences, as compare's markdown lines."""
    def label(group):
        return ", ".join(f"{names[i]} (seed {_seed(configs[i])})" for i in group)

    md = ["", heading, ""]
    md += [f"- group {g + 1}: {label(group)}" for g, group in enumerate(groups)]
    if len(groups) < 2:
        return md + ["", "one group only: every run is the same setting, nothing to compare across settings"]
    if isinstance(averaged, str):
        md += ["", f"meta-test not averaged: {averaged}"]
    def what(g):
        return settings_diff(_without_seed(configs[groups[0][0]]), _without_seed(configs[groups[g][0]]))

    for g, table in ({} if isinstance(averaged, str) else averaged).items():
        md += ["", f"group {g + 1} - group 1 ({what(g)}):", ""]
        md += [f"- {learner}: " + ", ".join(f"{s}-shot {v['mean']:+.2f} +- {v['ci95']:.2f} ({v['group_mean']:.2f} vs "
                                            f"{v['first_mean']:.2f})" for s, v in cells.items())
               for learner, cells in table.items()]
    for g, table in (val_averaged or {}).items():
        if table:
            md += ["", f"group {g + 1} - group 1, meta-val averaged task by task ({what(g)}):", ""]
            md += [f"- at {it}: " + ", ".join(f"{s}-shot {v['mean']:+.2f} +- {v['ci95']:.2f} ({v['group_mean']:.2f} "
                                              f"vs {v['first_mean']:.2f})" for s, v in cells.items())
                   for it, cells in table.items()]
    return md
