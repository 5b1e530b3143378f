"""Benchmark: one cross-task replay meta-batch (MAML, Eq. 4), vmapped over tasks vs one task at a time.

Not a test: it reports. All variants compute the same meta-gradient on the same meta-batch
(drawn once from a memory bank of random images; the authors' setting by default: 10 tasks,
5-way 1-shot 15 queries, 5 inner SGD steps, second order, Conv4 at 32 px): the sequential
reference (``maml_meta_batch_reference``), the fast engine's torch.func path
(``maml_meta_batch_fast``, all tasks in one vmap), the same with vmap's chunk_size=1
(one task per vmap slice), on CUDA the same captured in one CUDA graph
(``GraphedMetaBatch``, what the engine runs there) and on a CPU with more than one torch thread
the reference's tasks side by side in threads (``maml_meta_batch_threaded``, what the engine
runs there). Medians over repeats after a warm-up, in seconds per meta-batch.

    python -m fastfree.profiling.bench_replay --tasks 10 --width 32 --json out.json
"""

from __future__ import annotations

import traceback
from functools import partial

import torch

from fastfree.commands.common import run_metadata, write_json
from fastfree.data.split import CIFAR100_NORM
from fastfree.engine.replay import GraphedMetaBatch, maml_meta_batch_fast, maml_meta_batch_threaded
from fastfree.free.memory import MemoryBank
from fastfree.free.replay import ReplayConfig, maml_meta_batch_reference
from fastfree.metatest.adapt import functional_template
from fastfree.models import build_model
from fastfree.profiling.timing import median_time, parser, report, resolve_device

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def bench(tasks: int, ways: int, shots: int, queries: int, inner_steps: int, first_order: bool, width: int,
          image_size: int, dtype: torch.dtype, repeats: int, device: torch.device, on_variant=None) -> dict:
    """Time each variant; `on_variant(result so far)` after each one (the script saves it then)."""
    cfg = ReplayConfig(meta_batch=tasks, ways=ways, shots=shots, queries=queries, inner_steps=inner_steps,
                       second_order=not first_order)
    torch.manual_seed(0)
    learner = functional_template(build_model("conv4", ways, width, image_size)).to(device=device, dtype=dtype)
    per_class = shots + queries
    classes = 4 * ways
    bank = MemoryBank(capacity_per_class=per_class, image_shape=(3, image_size, image_size), device=device,
                      dtype=dtype)
    g = torch.Generator(device=device).manual_seed(0)
    bank.add(torch.rand(classes * per_class, 3, image_size, image_size, generator=g, device=device, dtype=dtype),
             torch.arange(classes, device=device).repeat(per_class))
    batch = bank.sample_tasks(tasks, ways, shots, queries, g)

    def timed(fn) -> dict:
        # the loss is read back so that each call is synchronised (and the host read is counted)
        return median_time(lambda: fn(learner, batch, CIFAR100_NORM, cfg)[1].item(), repeats, device)

    variants = {"fast": maml_meta_batch_fast, "fast_chunk1": partial(maml_meta_batch_fast, chunk_size=1),
                "reference": maml_meta_batch_reference}
    if device.type == "cuda":  # the engine's replay on CUDA: the vmapped meta-batch captured in one CUDA graph
        variants["fast_graphed"] = GraphedMetaBatch()
    elif torch.get_num_threads() > 1:  # the engine's replay on such a CPU
        variants["threads"] = maml_meta_batch_threaded
    times, errors = {}, {}
    result = {
        "benchmark": "cross-task replay meta-batch, vmapped over tasks vs sequential (seconds per meta-batch)",
        "tasks": tasks, "ways": ways, "shots": shots, "queries": queries, "inner_steps": inner_steps,
        "second_order": not first_order, "width": width, "image_size": image_size, "dtype": str(dtype),
        "repeats": repeats, "times": times, "errors": errors, **run_metadata(device),
    }
    for name, fn in variants.items():
        try:
            times[name] = timed(fn)
        except Exception as e:  # one variant failing (a first capture on a new GPU) must not lose the others
            traceback.print_exc()
            errors[name] = f"{type(e).__name__}: {e}"[:2000]
        if on_variant is not None:
            on_variant(result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--first-order", action="store_true", help="FOMAML instead of second order")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = p.parse_args(argv)
    result = bench(args.tasks, args.ways, args.shots, args.queries, args.inner_steps, args.first_order, args.width,
                   args.image_size, DTYPES[args.dtype], args.repeats, resolve_device(args.device),
                   lambda partial: write_json(args.json, partial))
    t = result["times"]
    if "reference" not in t or "fast" not in t:
        print(f"not timed: {result['errors']}")
        write_json(args.json, result)
        return 1
    for name in ("fast_chunk1", "fast_graphed", "threads"):
        if name in t:
            result[f"speedup_{name}_over_reference"] = t["reference"]["median_s"] / t[name]["median_s"]
            print(f"{name}: {1e3 * t[name]['median_s']:.1f} ms per meta-batch "
                  f"({result[f'speedup_{name}_over_reference']:.2f}x the reference)")
    report(result, "fast", "reference", "meta-batch", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
