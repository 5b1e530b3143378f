"""Benchmark: one FIVE epoch (b teachers x (k inner Adam steps + the meta-gradient)), reference vs fast.

Not a test: it reports. Issue 4's setting by default: b=4, k=5, 100 latent codes (5 ways x
20), generator ngf 64, Conv4-32 teachers (frozen, eval mode) and meta-learner, at the given
image size. Variants, all on the same inputs, each timed as a median over repeats after a
warm-up (compilation and CUDA-graph capture happen in the warm-up):

  reference         fastfree.free.five.five_reference (deepcopy + torch.optim.Adam per teacher)
  fast              FastFive with the device's defaults, eager (vmap on CUDA, loop on a CPU)
  fast_compile      + torch.compile of the inner step and the meta-gradient
  fast_graphs       + the epoch captured in one CUDA graph (CUDA only)
  fast_compile_graphs
  fast_compile_graphs_nokernels   the same with the torch losses instead of the fused Triton kernels
  fast_graphs_nokernels           graphed, not compiled, with the torch losses
  fast_compile_graphs_channels_last   inductor forced to channels-last layouts (its heuristic otherwise)
  fast_cudnn_benchmark   with cuDNN's algorithm search (CUDA only)
  fast_unfused, fast_graphs_unfused, fast_compile_graphs_unfused, fast_loop_compile_graphs_unfused
                    the generator's upsample + 3x3 convolution pairs as written (not fused)
  fast_notf32, fast_graphs_notf32, fast_compile_graphs_notf32   fp32 convolutions without TF32 (CUDA only)
  *_bf16            the same with bf16 autocast (--amp)

    python -m fastfree.profiling.bench_five --image-size 32 --variants reference fast --json out.json
"""

from __future__ import annotations

import traceback
from typing import Callable

import torch

from fastfree.commands.common import run_metadata, write_json
from fastfree.data.split import CIFAR100_NORM
from fastfree.engine.augment import draw_table
from fastfree.engine.five import FastFive
from fastfree.engine.options import EngineOptions
from fastfree.engine.teachers import StackedTeachers
from fastfree.free.five import FiveConfig, five_reference, task_labels
from fastfree.metatest.adapt import functional_template
from fastfree.models import Conv4, Generator
from fastfree.profiling.timing import median_time, parser, resolve_device

FAST = {
    "fast": {},
    "fast_compile": {"compile": True},
    "fast_graphs": {"cuda_graphs": True},
    "fast_compile_graphs": {"compile": True, "cuda_graphs": True},
    # the fused Triton losses' effect on a whole epoch (issue 5): the same without them
    "fast_compile_graphs_nokernels": {"compile": True, "cuda_graphs": True, "kernels": False},
    "fast_graphs_nokernels": {"cuda_graphs": True, "kernels": False},  # the same without compiling (cheap)
    # inductor decides channels-last for convolution graphs by a heuristic (layout_optimization, on by
    # default); this variant forces it, to measure whether channels-last helps here
    "fast_compile_graphs_channels_last": {"compile": True, "cuda_graphs": True, "channels_last": True},
    # cuDNN's algorithm search for the fixed shapes (torch.backends.cudnn.benchmark), CUDA only. On an
    # H100 it changed nothing (eager epoch: 149.0 vs 148.6 ms of kernels, five_kernels)
    "fast_cudnn_benchmark": {"cudnn_benchmark": True},
    # fp32 convolutions without TF32 (cuDNN's default allows it): on an H100 a third of the eager fp32
    # epoch's GPU time was cuDNN's genericTranspose around vmap's grouped convolutions (five_kernels)
    "fast_notf32": {"tf32": False},
    "fast_graphs_notf32": {"cuda_graphs": True, "tf32": False},
    "fast_compile_graphs_notf32": {"compile": True, "cuda_graphs": True, "tf32": False},
    # teachers mapped by a loop instead of vmap (the CPU's default, EngineOptions.five_vmap): plain
    # convolutions instead of vmap's grouped ones. cuDNN transposes around each grouped convolution
    # (five_kernels on an H100), and inductor's layout heuristic for inference graphs (which FIVE's
    # compiled gradients are) weighs grouped convolutions' FLOPs as slower in channels-last, so a
    # vmapped graph stays NCHW while a loop's plain convolutions tip it to channels-last.
    "fast_loop": {"five_vmap": False},
    "fast_loop_graphs": {"cuda_graphs": True, "five_vmap": False},
    "fast_loop_compile_graphs": {"compile": True, "cuda_graphs": True, "five_vmap": False},
    "fast_vmap": {"five_vmap": True},  # vmap where the device's default is the loop (a CPU)
    "fast_vmap_compile": {"compile": True, "five_vmap": True},
    "fast_loop_compile": {"compile": True, "five_vmap": False},
    # the generator's upsample-then-convolve pairs run as written instead of as one transposed
    # convolution each (EngineOptions.fuse_upsample, on by default): what the fusion buys
    "fast_unfused": {"fuse_upsample": False},
    "fast_graphs_unfused": {"cuda_graphs": True, "fuse_upsample": False},
    "fast_compile_graphs_unfused": {"compile": True, "cuda_graphs": True, "fuse_upsample": False},
    "fast_loop_compile_graphs_unfused": {"compile": True, "cuda_graphs": True, "five_vmap": False,
                                         "fuse_upsample": False},
}


# Issue 4's epoch: b teachers, k inner steps, ways x per_class latent codes, generator ngf, Conv4-width
ISSUE4_EPOCH = {"b": 4, "k": 5, "ways": 5, "per_class": 20, "ngf": 64, "width": 32}


def add_epoch_flags(p) -> None:
    """--b, --k, --ways, --per-class, --ngf, --width (issue 4's epoch by default) and --image-size."""
    for name, value in ISSUE4_EPOCH.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=value)
    p.add_argument("--image-size", type=int, default=32)


def is_variant(name: str) -> bool:
    """Whether `name` is a variant make_calls knows ("reference" or a FAST key, maybe with "_bf16")."""
    base = name.removesuffix("_bf16")
    return base == "reference" or base in FAST


def variants_for(device: torch.device) -> list[str]:
    """Most telling first: a run cut short by its time limit keeps those (results are saved per variant)."""
    if device.type != "cuda":
        return ["reference", "fast", "fast_unfused"]
    return ["reference", "fast_compile_graphs", "fast_compile_graphs_bf16", "reference_bf16", "fast", "fast_graphs",
            "fast_compile", "fast_compile_graphs_nokernels", "fast_compile_graphs_channels_last_bf16"]


def make_calls(variants: list[str], b: int, k: int, ways: int, per_class: int, ngf: int, width: int,
               image_size: int, device: torch.device) -> dict[str, Callable[[], float]]:
    """One callable per variant the device supports, each running one FIVE epoch on the same inputs
    and reading its loss back (so a call is synchronised). Nothing runs (or compiles) until called."""
    torch.manual_seed(0)
    gen = Generator(256, ngf, image_size).to(device)
    teachers = [Conv4(ways, width, image_size).to(device).eval().requires_grad_(False) for _ in range(b)]
    learner = functional_template(Conv4(ways, width, image_size)).to(device)
    cfg = FiveConfig(k=k, images_per_class=per_class)
    ids = list(range(b))
    labels = task_labels(ways, per_class, device)
    z = torch.randn(b, ways * per_class, 256, device=device)
    draws = draw_table(b, k + 1, cfg.pad, torch.Generator().manual_seed(0)).to(device)
    stack = StackedTeachers(teachers)
    unknown = [n for n in variants if not is_variant(n)]
    if unknown:
        raise ValueError(f"unknown FIVE variants {unknown}; known: reference, {', '.join(FAST)} (each also + _bf16)")
    calls = {}
    for name in variants:
        amp = name.endswith("_bf16")
        base = name.removesuffix("_bf16")
        if base == "reference":
            def call(amp=amp):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    tasks, _ = five_reference(gen, teachers, ids, learner, CIFAR100_NORM, cfg, True,
                                              torch.Generator().manual_seed(0))
                return tasks[-1].final_loss  # a host read: synchronised
        else:
            flags = dict(FAST[base])
            cuda_only = flags.get("cuda_graphs") or flags.get("cudnn_benchmark") or "tf32" in flags
            if cuda_only and device.type != "cuda":
                continue
            options = EngineOptions.for_device(device, amp=amp, cuda_graphs=flags.get("cuda_graphs", False),
                                               compile=flags.get("compile", False), kernels=flags.get("kernels"),
                                               five_vmap=flags.get("five_vmap"),
                                               fuse_upsample=flags.get("fuse_upsample", True))
            five = FastFive(gen, stack, learner, CIFAR100_NORM, cfg, options, device)
            theta, lp = dict(gen.named_parameters()), dict(learner.named_parameters())
            id_tensor = torch.tensor(ids, device=device)

            def call(five=five, theta=theta, lp=lp, id_tensor=id_tensor, cl=flags.get("channels_last", False),
                     cudnn_benchmark=flags.get("cudnn_benchmark", False), tf32=flags.get("tf32", True)):
                # compilation, cuDNN's algorithm search and graph capture happen in the first (warm-up) call
                with torch._inductor.config.patch(force_layout_optimization=cl), \
                        torch.backends.cudnn.flags(enabled=True, benchmark=cudnn_benchmark, allow_tf32=tf32):
                    return five(theta, z, id_tensor, draws, lp, labels, True).loss.sum().item()
        calls[name] = call
    return calls


def bench(variants: list[str], b: int, k: int, ways: int, per_class: int, ngf: int, width: int, image_size: int,
          repeats: int, device: torch.device, on_variant=None) -> dict:
    """Time each variant; `on_variant(partial_result)` after each one (the script saves it then)."""
    calls = make_calls(variants, b, k, ways, per_class, ngf, width, image_size, device)
    times, errors = {}, {}
    for name, call in calls.items():
        try:
            times[name] = median_time(call, repeats, device)
        except Exception as e:  # one variant failing (e.g. a first run on a new GPU) must not lose the others
            traceback.print_exc()
            errors[name] = f"{type(e).__name__}: {e}"[:2000]
        if on_variant is not None:
            on_variant(_result(times, errors, b, k, ways, per_class, ngf, width, image_size, repeats, device))
    return _result(times, errors, b, k, ways, per_class, ngf, width, image_size, repeats, device)


def _result(times, errors, b, k, ways, per_class, ngf, width, image_size, repeats, device) -> dict:
    ref = times.get("reference", {}).get("median_s")
    return {
        "benchmark": "one FIVE epoch: b teachers x (k inner Adam steps + meta-gradient), seconds per epoch",
        "b": b, "k": k, "images": ways * per_class, "ngf": ngf, "teacher": f"conv4-{width}", "image_size": image_size,
        "repeats": repeats, "times": times,
        "speedup_over_reference": {n: ref / t["median_s"] for n, t in times.items()} if ref else {},
        "errors": errors,
        **run_metadata(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--variants", nargs="+", help="default: all that the device supports")
    add_epoch_flags(p)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    result = bench(args.variants or variants_for(device), args.b, args.k, args.ways, args.per_class, args.ngf,
                   args.width, args.image_size, args.repeats, device, lambda r: write_json(args.json, r))
    for name, t in result["times"].items():
        ratio = result["speedup_over_reference"].get(name)
        print(f"{result['device_name']} {args.image_size}px {name:>26}: {1e3 * t['median_s']:8.1f} ms"
              + (f"  ({ratio:.2f}x the reference)" if ratio else "") + f"  (first call {t['warmup_s']:.1f} s)",
              flush=True)
    for name, error in result["errors"].items():
        print(f"{result['device_name']} {args.image_size}px {name:>26}: FAILED {error.splitlines()[0]}", flush=True)
    write_json(args.json, result)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
