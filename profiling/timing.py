"""What the benchmarks share: synchronised medians after warm-up, and their command line."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from fastfree.commands.common import write_json
from fastfree.device import resolve_device


def synced_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of fn; on CUDA synchronised before and after, so the queued work counts."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], repeats: int, device: torch.device, per: int = 1) -> dict:
    """Call fn once to warm up, then `repeats` times; seconds per unit (`per` units per call).

    warmup_s: the first call's seconds, synchronised (compilation, CUDA-graph capture and cuDNN's
    algorithm search happen there; inductor's on-disk cache shortens a repeated compilation).
    """
    warmup = synced_seconds(fn, device)
    runs = [synced_seconds(fn, device) / per for _ in range(repeats)]
    return {"median_s": statistics.median(runs), "runs_s": runs, "warmup_s": warmup}


def fastest(result: dict, baseline: str = "reference") -> str:
    """The fastest timed variant of a benchmark's `times` other than the baseline ones (names starting
    with `baseline`)."""
    times = result["times"]
    return min((n for n in times if not n.startswith(baseline)), key=lambda n: times[n]["median_s"])


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the result to this file")
    return p


def report(result: dict, fast: str, slow: str, unit: str, json_path: str | None) -> None:
    """Print fast vs slow side by side with their ratio, and write the JSON."""
    t = result["times"]
    ratio = t[slow]["median_s"] / t[fast]["median_s"]
    result[f"speedup_{fast}_over_{slow}"] = ratio
    print(f"{result['device_name']}: {fast} {1e3 * t[fast]['median_s']:.1f} ms, {slow} "
          f"{1e3 * t[slow]['median_s']:.1f} ms per {unit} -> {fast} is {ratio:.2f}x")
    write_json(json_path, result)


__all__ = ["fastest", "median_time", "parser", "report", "resolve_device"]
