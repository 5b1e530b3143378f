"""Benchmark: meta-test adaptation vmapped over tasks vs one task at a time, one run, one device.

Not a test: it reports. Both engines adapt the same random initialisations on the same
tasks (5-way, 15 queries, 10 SGD steps); medians over repeats after a warm-up chunk.

    python -m fastfree.profiling.bench_metatest --tasks 50 --shots 5 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from fastfree.commands.common import run_metadata, write_json
from fastfree.data.procedural import build_procedural
from fastfree.device import resolve_device
from fastfree.metatest.initializations import random_init
from fastfree.metatest.protocol import MetaTestConfig, run_metatest
from fastfree.models import build_model


def bench(tasks: int, shots: int, chunk: int, repeats: int, device: torch.device) -> dict:
    data = build_procedural(seed=0, images_per_class=100).to(device)
    init = random_init(partial(build_model, "conv4", 5, None, data.image_size), seed=0)
    times = {}
    for engine in ("batched", "reference"):
        cfg = MetaTestConfig(tasks=tasks, shots=(shots,), chunk=chunk, engine=engine)
        run_metatest(init, data.test, data.normalization, MetaTestConfig(tasks=min(chunk, tasks), shots=(shots,),
                                                                         chunk=chunk, engine=engine))  # warm-up
        runs = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            run_metatest(init, data.test, data.normalization, cfg)  # ends with a host read: synchronised
            runs.append((time.perf_counter() - t0) / tasks)
        times[engine] = {"median_s_per_task": statistics.median(runs), "runs": runs}
    return {
        "benchmark": "meta-test adaptation, vmapped over tasks vs sequential",
        "tasks": tasks, "shots": shots, "chunk": chunk, "repeats": repeats,
        "note": "includes sampling the tasks and building per-task random initialisations",
        "times": times,
        "speedup_batched_over_reference": times["reference"]["median_s_per_task"] / times["batched"]["median_s_per_task"],
        **run_metadata(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    r = bench(args.tasks, args.shots, args.chunk, args.repeats, device)
    t = r["times"]
    print(f"{r['device_name']}: batched {1e3 * t['batched']['median_s_per_task']:.1f} ms, reference "
          f"{1e3 * t['reference']['median_s_per_task']:.1f} ms per task -> batched is "
          f"{r['speedup_batched_over_reference']:.2f}x")
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
