"""Replicates of one ablation pooled from saved comparisons: each setting minus the base setting,
averaged task by task over every replicate, read from the JSON that `fastfree compare --json` wrote.

One comparison (one training seed, one pool) is one draw: FREE and an ablation of it differ by a
point or more between seeds. `fastfree compare --average-seeds` pools runs whose folders are at hand
and differ only in --seed. This pools comparisons already saved (profiling/results/ keeps them; the
run folders may be gone), whatever else differs between the replicates, another pool included:
inside each comparison the runs differ only in the ablated flags and meet the same tasks, so each
replicate is a paired difference, and the replicates are averaged per task (a setting's learners
averaged per task over the replicates, minus the base's, with a paired 95% interval).

    python -m fastfree.profiling.replicates A.json B.json C.json [--base free] [--label s42 ...] [--json out.json]

Runs are matched across files by their `--name` in the comparison (each file needs the base and
every setting pooled). Random must score alike on every meta-test task in every run (the proof of
the same tasks); meta-val is averaged at the evaluations every run made under one task protocol.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastfree.commands.common import write_json
from fastfree.errors import FastFreeError
from fastfree.profiling.seed_groups import averaged_minus_first, averaged_val_minus_first, seeds_markdown
from fastfree.read_back import read_json


def load_comparison(path: Path) -> dict[str, dict]:
    """The runs of one saved comparison, by name: compare's own JSON, or a results file holding it
    under "compare" (as profiling/results/ keeps them)."""
    if not path.is_file():
        raise FastFreeError(f"{path}: no such file; pass the JSON of `fastfree compare RUN... --json F`")
    saved = read_json(path, "Write it again with `fastfree compare RUN... --json F`")
    runs = saved.get("compare", saved).get("runs") if isinstance(saved, dict) else None
    if not isinstance(runs, dict) or not runs:
        raise FastFreeError(f"{path}: no runs in it; pass the JSON of `fastfree compare RUN... --json F`")
    return runs


def pooled(comparisons: list[dict[str, dict]], labels: list[str], base: str | None = None) -> tuple[dict, str]:
    """Every setting that all comparisons hold, minus `base` (default: the first file's first run),
    averaged per task over the comparisons: (payload, markdown). `labels` name the comparisons."""
    if len(comparisons) < 2:
        raise FastFreeError("pool at least two comparisons (one is a single replicate: `fastfree compare` reads it)")
    base = base or next(iter(comparisons[0]))
    shared = [n for n in comparisons[0] if all(n in c for c in comparisons)]
    missing = [label for label, c in zip(labels, comparisons) if base not in c]
    if missing:
        raise FastFreeError(f"--base {base!r} is not a run of {', '.join(missing)}; the runs there: "
                            f"{', '.join(comparisons[0])}")
    settings = [base] + [n for n in shared if n != base]
    if len(settings) < 2:
        raise FastFreeError(f"no run name besides {base!r} is in every comparison: name the runs alike "
                            f"(`fastfree compare ... --name free --name erm`)")
    runs, names, groups = [], [], []
    for setting in settings:
        groups.append(list(range(len(runs), len(runs) + len(comparisons))))
        for label, c in zip(labels, comparisons):
            runs.append(c[setting])
            names.append(f"{label}:{setting}")
    averaged = averaged_minus_first([r.get("per_task") for r in runs], groups)
    val = [{int(it): v for it, v in (r.get("val_per_task") or {}).items()} for r in runs]
    # one data set: Random's per-task scores alike on meta-test say so (the task protocol alone does not)
    val_averaged = averaged_val_minus_first(val, groups, [not isinstance(averaged, str)] * len(runs))
    md = seeds_markdown(names, [r["config"] for r in runs], groups, averaged, val_averaged,
                        heading="Replicates averaged task by task (each setting's learners averaged per task "
                                "over the comparisons, minus the base's; points, 95% interval):")
    payload = {"comparisons": labels, "base": base, "groups": {f"group {g + 1}": [names[i] for i in group]
                                                               for g, group in enumerate(groups)},
               "averaged_minus_base": averaged if isinstance(averaged, str) else {
                   settings[g]: table for g, table in averaged.items()},
               "meta_val_averaged_minus_base": {settings[g]: table for g, table in val_averaged.items()}}
    return payload, "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("comparisons", nargs="+", type=Path, help="JSON files of `fastfree compare --json` (or results "
                                                             "files holding one under \"compare\")")
    p.add_argument("--base", help="the run name the others are compared with (default: the first file's first run)")
    p.add_argument("--label", action="append", default=[], help="a name for each comparison, in order (default: "
                                                                "the files' names without .json)")
    p.add_argument("--json", type=Path, help="write the pooled differences here")
    args = p.parse_args(argv)
    labels = args.label or [f.stem for f in args.comparisons]
    if len(labels) != len(args.comparisons) or len(set(labels)) != len(labels):
        p.error(f"{len(args.label)} --label for {len(args.comparisons)} files: give each file its own, or none")
    try:
        payload, md = pooled([load_comparison(f) for f in args.comparisons], labels, args.base)
    except FastFreeError as e:
        p.exit(2, f"replicates: {e}\n")
    print(md, end="")
    write_json(args.json, payload)  # atomic; nothing without --json
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
