"""Where one FIVE epoch's time goes: the top CUDA kernels (on a CPU: operators) of each variant.

Not a test: it reports. The epoch and its variants are bench_five's (same inputs and shape
options, issue 4's epoch by default); each variant is warmed up (compilation, cuDNN's algorithm
search), then --epochs epochs are profiled by torch.profiler. Per variant, per epoch: the wall
time, the sum of the kernels' device time, and the top kernels by device time (name, calls,
total microseconds). On a CPU the same with each operator's self CPU time (every operator's
own time, the Python-level ranges such as torch.optim's step included, so they sum to the
profiled CPU time) and the number of operators dispatched. The default variants on CUDA are
ungraphed: eager and compiled (the kernels a CUDA graph of it would replay), teachers vmapped
(grouped convolutions) and looped (plain ones); on a CPU the reference and the fast engine, with
and without the fused upsampling.

    python -m fastfree.profiling.five_kernels --image-size 32 --variants reference fast --json out.json
    OMP_NUM_THREADS=1 python -m fastfree.profiling.five_kernels --device cpu --b 2 --k 2 --per-class 4 \
        --ngf 8 --width 8 --image-size 16 --epochs 10      (the benchmark regression tests' epoch)
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from fastfree.commands.common import run_metadata, write_json
from fastfree.profiling.bench_five import ISSUE4_EPOCH, add_epoch_flags, make_calls, variants_for
from fastfree.profiling.timing import parser, resolve_device


# fast_unfused_bf16 beside fast_bf16: the generator's upsampling + convolution as written vs as one transposed
# convolution (under vmap a grouped one, which cuDNN has run slowly in some shapes: pytorch/pytorch#95604)
DEFAULT_VARIANTS = ["reference", "fast_bf16", "fast_unfused_bf16", "fast_loop_bf16", "fast_compile_bf16",
                    "fast_loop_compile_bf16", "fast", "fast_loop", "fast_notf32"]


def top_kernels(prof, top: int, per: int = 1) -> tuple[float, list[dict]]:
    """(total device microseconds, the `top` kernels by device time) of a finished profile, per
    one of its `per` epochs."""
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:  # older torch
            us = getattr(e, "self_cuda_time_total", 0.0)
        if us > 0 and e.device_type == torch.autograd.DeviceType.CUDA:
            rows.append({"kernel": e.key[:160], "calls": e.count / per, "total_us": round(us / per, 1)})
    rows.sort(key=lambda r: -r["total_us"])
    return sum(r["total_us"] for r in rows), rows[:top]


def top_cpu_ops(prof, top: int, per: int = 1) -> tuple[float, int, list[dict]]:
    """(total self CPU microseconds, aten operators dispatched, the `top` entries by self CPU time)
    of a finished CPU profile, per one of its `per` epochs. Self times do not overlap, so they add
    up to the profiled CPU time; an operator's self time is what it spends outside the operators
    it calls (oneDNN's transposed convolution, for one, is no operator of its own: its time shows as
    aten::_convolution's)."""
    rows = [{"kernel": e.key[:160], "calls": e.count / per, "total_us": round(e.self_cpu_time_total / per, 1)}
            for e in prof.key_averages() if e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r["total_us"])
    ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) // per
    return sum(r["total_us"] for r in rows), ops, rows[:top]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--variants", nargs="+", help="default: on CUDA " + " ".join(DEFAULT_VARIANTS) +
                   "; on a CPU bench_five's CPU variants")
    add_epoch_flags(p)
    p.add_argument("--epochs", type=int, default=1, help="epochs profiled per variant (reported per epoch)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    shape = {name: getattr(args, name) for name in ISSUE4_EPOCH}
    variants = args.variants or (DEFAULT_VARIANTS if cuda else variants_for(device))
    calls = make_calls(variants, **shape, image_size=args.image_size, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    result = {"benchmark": f"one FIVE epoch (b={shape['b']}, k={shape['k']}, {shape['ways'] * shape['per_class']} "
                           f"images, ngf {shape['ngf']}, Conv4-{shape['width']}), top "
                           + ("kernels by device time" if cuda else "operators by self CPU time"),
              **shape, "image_size": args.image_size, "epochs_profiled": args.epochs, "variants": {},
              **run_metadata(device)}
    for name, call in calls.items():
        call()  # warm-up
        # acc_events: one cycle either way; without it torch 2.11 warns on every profile that events
        # are cleared between cycles (2.13 warns only on a second cycle)
        with profile(activities=activities, acc_events=True) as prof:
            t0 = time.perf_counter()
            for _ in range(args.epochs):
                call()
            wall = (time.perf_counter() - t0) / args.epochs
        if cuda:
            total, top = top_kernels(prof, args.top, args.epochs)
            entry = {"wall_ms": round(1e3 * wall, 2), "kernels_ms": round(total / 1e3, 2), "top": top}
            what = f"kernels {total / 1e3:.1f} ms"
        else:
            total, ops, top = top_cpu_ops(prof, args.top, args.epochs)
            entry = {"wall_ms": round(1e3 * wall, 2), "cpu_ms": round(total / 1e3, 2), "aten_ops": ops, "top": top}
            what = f"self CPU time {total / 1e3:.1f} ms, {ops} aten operators"
        result["variants"][name] = entry
        print(f"{result['device_name']} {name}: wall {1e3 * wall:.1f} ms (profiled), {what} per epoch", flush=True)
        for r in top[:8]:
            print(f"    {r['total_us'] / 1e3:8.2f} ms {r['calls']:7.1f}x {r['kernel'][:110]}", flush=True)
        write_json(args.json, result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
