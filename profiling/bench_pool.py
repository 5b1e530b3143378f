"""Benchmark: batched (vmap) vs one-by-one teacher-pool pretraining, in one run, one device.

Not a test: it reports, it does not assert. Both engines train the same teachers on the same
data for the same number of optimiser steps after a warm-up step; we report the median over
repeats of the time per teacher-step, their ratio and the device.

    python -m fastfree.profiling.bench_pool --teachers 8 --steps 5 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastfree.commands.common import run_metadata, write_json
from fastfree.data.procedural import build_procedural
from fastfree.device import resolve_device
from fastfree.pool.pretrain import PretrainConfig, train_teacher_reference, train_teachers_batched
from fastfree.pool.teachers import sample_teacher_specs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(teachers: int, steps: int, repeats: int, batch_size: int, device: torch.device) -> dict:
    data = build_procedural(seed=0, images_per_class=200).to(device)
    split, norm = data.train, data.normalization
    cfg = PretrainConfig(teachers=teachers, epochs=1, batch_size=batch_size, eval_batch=256)
    specs = sample_teacher_specs(split.classes, teachers, cfg.ways, seed=0)

    def batched(n):
        train_teachers_batched(split, norm, specs, cfg, max_steps=n)

    def one_by_one(n):
        for s in specs:
            train_teacher_reference(split, norm, s, cfg, max_steps=n)

    times = {}
    for name, fn in (("batched", batched), ("one_by_one", one_by_one)):
        fn(1)  # warm-up (allocator, kernels' first launch)
        runs = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn(steps)
            _sync(device)
            runs.append((time.perf_counter() - t0) / (steps * teachers))
        times[name] = {"median_s_per_teacher_step": statistics.median(runs), "runs": runs}
    ratio = times["one_by_one"]["median_s_per_teacher_step"] / times["batched"]["median_s_per_teacher_step"]
    return {
        "benchmark": "pool pretraining, batched vs one-by-one",
        "teachers": teachers, "steps": steps, "repeats": repeats, "batch_size": batch_size,
        "note": "each timing includes one held-out evaluation per teacher (one epoch)",
        "times": times, "speedup_batched_over_one_by_one": ratio,
        **run_metadata(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teachers", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    result = bench(args.teachers, args.steps, args.repeats, args.batch_size, device)
    t = result["times"]
    print(f"{result['device_name']}: batched {1e3 * t['batched']['median_s_per_teacher_step']:.1f} ms, "
          f"one-by-one {1e3 * t['one_by_one']['median_s_per_teacher_step']:.1f} ms per teacher-step "
          f"-> batched is {result['speedup_batched_over_one_by_one']:.2f}x")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
