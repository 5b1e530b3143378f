"""Where one FIVE epoch's GPU time goes: the top CUDA kernels of each variant, by torch.profiler.

Not a test: it reports. The epoch and its variants are bench_five's (same inputs); each variant
is warmed up (compilation, cuDNN's algorithm search), then one epoch is profiled. Per variant:
the wall time of that epoch, the sum of its kernels' device time, and the top kernels by
device time (name, calls, total microseconds). The default variants are ungraphed: eager and
compiled (the kernels a CUDA graph of it would replay), teachers vmapped (grouped convolutions)
and looped (plain ones).

    python -m fastfree.profiling.five_kernels --image-size 32 --variants reference fast --json out.json
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from fastfree.commands.common import run_metadata, write_json
from fastfree.profiling.bench_five import ISSUE4_EPOCH, make_calls
from fastfree.profiling.timing import parser, resolve_device


# fast_unfused_bf16 beside fast_bf16: the generator's upsampling + convolution as written vs as one transposed
# convolution (under vmap a grouped one, which cuDNN has run slowly in some shapes: pytorch/pytorch#95604)
DEFAULT_VARIANTS = ["reference", "fast_bf16", "fast_unfused_bf16", "fast_loop_bf16", "fast_compile_bf16",
                    "fast_loop_compile_bf16", "fast", "fast_loop", "fast_notf32"]


def top_kernels(prof, top: int) -> tuple[float, list[dict]]:
    """(total device microseconds, the `top` kernels by device time) of a finished profile."""
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:  # older torch
            us = getattr(e, "self_cuda_time_total", 0.0)
        if us > 0 and e.device_type == torch.autograd.DeviceType.CUDA:
            rows.append({"kernel": e.key[:160], "calls": e.count, "total_us": round(us, 1)})
    rows.sort(key=lambda r: -r["total_us"])
    return sum(r["total_us"] for r in rows), rows[:top]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    calls = make_calls(args.variants, **ISSUE4_EPOCH, image_size=args.image_size, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    result = {"benchmark": "one FIVE epoch (b=4, k=5, 100 images, ngf 64, Conv4-32), top kernels by device time",
              "image_size": args.image_size, "variants": {}, **run_metadata(device)}
    for name, call in calls.items():
        call()  # warm-up
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            call()
            wall = time.perf_counter() - t0
        total, top = top_kernels(prof, args.top)
        result["variants"][name] = {"wall_ms": round(1e3 * wall, 2), "kernels_ms": round(total / 1e3, 2), "top": top}
        print(f"{result['device_name']} {name}: wall {1e3 * wall:.1f} ms, kernels {total / 1e3:.1f} ms", flush=True)
        for r in top[:8]:
            print(f"    {r['total_us'] / 1e3:8.2f} ms {r['calls']:5d}x {r['kernel'][:110]}", flush=True)
        write_json(args.json, result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
