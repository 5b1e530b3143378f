"""Benchmark: a whole FREE iteration (FIVE + meta-generator + bank + alignment + BELL + replay),
reference engine vs fast engine, one run, one device.

Not a test: it reports. Each engine starts from the same fresh steady-state (see
fastfree.profiling.workload), runs one untimed warm-up iteration (compilation, CUDA-graph
capture), then `repeats` timed iterations. Both engines draw the same random numbers, so they
run the same iterations (in float32 replay's patience may stop a meta-batch apart; the counts are
reported). Time per iteration is the host's synchronised wall time, what a user waits for; each
phase's share is its device time (CUDA events; wall time on a CPU).
"""

from __future__ import annotations

import statistics

from fastfree.free.trainer import free_iteration
from fastfree.profiling.workload import PHASES, Workload, fresh_state, make_engine


def time_engine(w: Workload, options, repeats: int) -> dict:
    state = fresh_state(w)
    engine = make_engine(w, options)

    def step() -> dict:
        return free_iteration(state, w.teachers, w.teacher_classes, w.dataset.normalization, w.cfg, engine)[0]

    warmup = step()
    runs = [step() for _ in range(repeats)]
    phase = {name: statistics.median([m["phase_s"].get(name, 0.0) for m in runs]) for name in PHASES}
    total = sum(phase.values())
    return {
        "median_s": statistics.median([m["iteration_s"] for m in runs]),
        "runs_s": [m["iteration_s"] for m in runs],
        "warmup_s": warmup["iteration_s"],
        "phase_median_s": phase,
        "phase_share": {k: v / total if total else None for k, v in phase.items()},
        "replay_meta_batches": [m.get("replay", {}).get("meta_batches", 0) for m in runs],
    }


def bench(w: Workload, fast_options, repeats: int, on_engine=None, reference: bool = True) -> dict:
    """Reference, then fast; `on_engine(partial_result)` after each (so a run cut off while the fast
    engine compiles still keeps the reference's time). `reference=False`: the fast engine only (a
    second variant timed on a device whose reference an earlier call timed)."""
    times = {}
    engines = (("reference", None),) if reference else ()
    for name, options in (*engines, ("fast", fast_options)):
        times[name] = time_engine(w, options, repeats)
        if on_engine is not None:
            on_engine(_result(w, fast_options, repeats, times))
    return _result(w, fast_options, repeats, times)


def _result(w: Workload, fast_options, repeats: int, times: dict) -> dict:
    return {
        "benchmark": "one whole FREE iteration (seconds), reference vs fast engine",
        "preset": w.preset.name, "b": w.cfg.teachers_per_iteration, "k": w.cfg.five.k,
        "image_size": w.dataset.image_size, "teachers": w.teachers_source, "repeats": repeats,
        "fast_options": fast_options.__dict__, "times": times,
    }
