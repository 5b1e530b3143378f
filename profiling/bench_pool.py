"""Benchmark: batched (vmap) vs one-by-one teacher-pool pretraining, in one run, one device.

Not a test: it reports, it does not assert. The engines train the same teachers on the same
data for the same number of optimiser steps (plus one held-out evaluation each); medians
over repeats after a warm-up, in seconds per teacher-step, their ratio and the device. On a CPU
with more than one torch thread also `threads` (the one-by-one teachers side by side in threads,
one intra-op thread each: what `auto` runs there).

    python -m fastfree.profiling.bench_pool --teachers 8 --steps 5 --json out.json
"""

from __future__ import annotations

import torch

from fastfree.commands.common import run_metadata
from fastfree.data.procedural import build_procedural
from fastfree.pool.pretrain import (
    PretrainConfig,
    train_teacher_reference,
    train_teachers_batched,
    train_teachers_side_by_side,
)
from fastfree.pool.teachers import sample_teacher_specs
from fastfree.profiling.timing import median_time, parser, report, resolve_device


def bench(teachers: int, steps: int, repeats: int, batch_size: int, device: torch.device) -> dict:
    data = build_procedural(seed=0, images_per_class=200).to(device)
    split, norm = data.train, data.normalization
    cfg = PretrainConfig(teachers=teachers, epochs=1, batch_size=batch_size)
    specs = sample_teacher_specs(split.classes, teachers, cfg.ways, seed=0)

    def batched():
        train_teachers_batched(split, norm, specs, cfg, max_steps=steps)

    def one_by_one():
        for s in specs:
            train_teacher_reference(split, norm, s, cfg, max_steps=steps)

    per = steps * teachers
    times = {"batched": median_time(batched, repeats, device, per),
             "one_by_one": median_time(one_by_one, repeats, device, per)}
    if device.type == "cpu" and torch.get_num_threads() > 1:
        times["threads"] = median_time(
            lambda: train_teachers_side_by_side(split, norm, specs, cfg, max_steps=steps), repeats, device, per)
    return {
        "benchmark": "pool pretraining, batched (and threads) vs one-by-one (seconds per teacher-step)",
        "teachers": teachers, "steps": steps, "repeats": repeats, "batch_size": batch_size,
        "note": "each call also evaluates every teacher once on its held-out images",
        "times": times,
        **run_metadata(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--teachers", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    result = bench(args.teachers, args.steps, args.repeats, args.batch_size, resolve_device(args.device))
    if "threads" in result["times"]:
        t = result["times"]
        print(f"threads: {1e3 * t['threads']['median_s']:.1f} ms per teacher-step "
              f"({t['one_by_one']['median_s'] / t['threads']['median_s']:.2f}x one by one)")
    report(result, "batched", "one_by_one", "teacher-step", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
