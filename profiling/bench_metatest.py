"""Benchmark: meta-test adaptation vmapped over tasks, and on a CPU with more than one torch
thread tasks side by side in threads, vs one task at a time, one run, one device.

Not a test: it reports. The engines adapt the same random initialisations on the same
tasks (5-way, 15 queries, 10 SGD steps); medians over repeats after a warm-up, in seconds
per task (sampling the tasks and building their initialisations included).

    python -m fastfree.profiling.bench_metatest --tasks 50 --shots 5 --json out.json
"""

from __future__ import annotations

from functools import partial

import torch

from fastfree.commands.common import run_metadata
from fastfree.data.procedural import build_procedural
from fastfree.metatest.initializations import random_init
from fastfree.metatest.protocol import MetaTestConfig, run_metatest
from fastfree.models import build_model
from fastfree.profiling.timing import fastest, median_time, parser, report, resolve_device


def bench(tasks: int, shots: int, chunk: int, repeats: int, device: torch.device) -> dict:
    data = build_procedural(seed=0, images_per_class=100).to(device)
    init = random_init(partial(build_model, "conv4", 5, None, data.image_size), seed=0)

    def timed(engine: str) -> dict:
        cfg = MetaTestConfig(tasks=tasks, shots=(shots,), chunk=chunk, engine=engine)
        # run_metatest ends with a host read of the accuracies, so it is synchronised
        return median_time(lambda: run_metatest(init, data.test, data.normalization, cfg), repeats, device, tasks)

    engines = ["batched", "reference"]
    if device.type == "cpu" and torch.get_num_threads() > 1:  # with one thread `threads` is the reference
        engines.append("threads")
    return {
        "benchmark": "meta-test adaptation, vmapped over tasks (and threaded on a CPU) vs sequential "
                     "(seconds per task)",
        "tasks": tasks, "shots": shots, "chunk": chunk, "repeats": repeats,
        "times": {name: timed(name) for name in engines},
        **run_metadata(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--chunk", type=int, default=50)
    args = p.parse_args(argv)
    result = bench(args.tasks, args.shots, args.chunk, args.repeats, resolve_device(args.device))
    report(result, fastest(result), "reference", "task", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
