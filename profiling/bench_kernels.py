"""Benchmark: the fused Triton losses vs their torch form vs torch.compile of the torch form.

Not a test: it reports. Forward + backward (the gradient the engine needs: w.r.t. the teacher
logits for Eq. 1's inversion loss, w.r.t. the student logits for BELL's distillation loss), at
the engine's size (T=4 teachers x B=100 images x C=5 classes) and a large one (B=65,536,
C=100). Medians over repeats after a warm-up (compilation included there), each repeat `calls`
back-to-back calls, in microseconds per call.

What to expect: at C=5 the kernels cannot win on arithmetic (there is almost none); they win,
if at all, on launches and bytes (one kernel instead of a dozen small element-wise ones, no
intermediate tensors). At 65,536 x 100 the loss is memory-bound and one pass over the logits
is the floor. The kernels need CUDA: on a CPU only the torch variants run (timing Triton's
interpreter would measure Python).

    python -m fastfree.profiling.bench_kernels --json out.json
"""

from __future__ import annotations

import torch

from fastfree.commands.common import run_metadata, write_json
from fastfree.engine.five import eq1_rows
from fastfree.free.losses import kl_per_sample
from fastfree.profiling.timing import median_time, parser, resolve_device

SHAPES = {"engine": (4, 100, 5), "large": (1, 65536, 100)}


def eq1_torch(teacher: torch.Tensor, student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1 per row in plain torch: the engine's --no-kernels path (eq1_rows) over rows of any batch shape."""
    rows, _ = eq1_rows(teacher.flatten(0, -2), student.flatten(0, -2), labels.flatten(), True, kernels=False)
    return rows.view(labels.shape)


def kd_torch(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    return kl_per_sample(teacher.detach().float(), student.float())


def _inputs(shape, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    t = torch.randn(*shape, generator=g, device=device, dtype=dtype)
    s = torch.randn(*shape, generator=g, device=device, dtype=dtype)
    y = torch.randint(0, shape[-1], shape[:-1], generator=g, device=device)
    return t, s, y


def variants(device: torch.device) -> dict:
    from fastfree.kernels import inversion_loss_rows, kl_rows

    out = {"torch": (eq1_torch, kd_torch),
           "torch_compile": (torch.compile(eq1_torch, fullgraph=True, dynamic=False),
                             torch.compile(kd_torch, fullgraph=True, dynamic=False))}
    if device.type == "cuda":
        out["kernel"] = (lambda t, s, y: inversion_loss_rows(t, s, y, True)[0], kl_rows)
    return out


def bench(repeats: int, calls: int, dtype: torch.dtype, device: torch.device, names: list[str] | None = None,
          shapes: list[str] | None = None) -> dict:
    times: dict = {}
    for shape_name, shape in SHAPES.items():
        if shapes and shape_name not in shapes:
            continue
        t, s, y = _inputs(shape, dtype, device)
        for name, (eq1, kd) in variants(device).items():
            if names and name not in names:
                continue

            def inversion(eq1=eq1):
                for _ in range(calls):
                    tt = t.detach().requires_grad_(True)
                    eq1(tt, s, y).sum().backward()

            def distillation(kd=kd):
                for _ in range(calls):
                    ss = s.detach().requires_grad_(True)
                    kd(t, ss).sum().backward()

            for loss, fn in (("inversion", inversion), ("distillation", distillation)):
                r = median_time(fn, repeats, device, per=calls)
                times.setdefault(f"{loss}_{shape_name}", {})[name] = {"median_us": 1e6 * r["median_s"]}
    for cell in times.values():
        ref = cell["torch"]["median_us"]
        for v in cell.values():
            v["speedup_over_torch"] = ref / v["median_us"]
    return {
        "benchmark": "fused losses forward + backward, microseconds per call",
        "shapes": {k: list(v) for k, v in SHAPES.items() if not shapes or k in shapes}, "dtype": str(dtype).removeprefix("torch."),
        "calls_per_repeat": calls, "repeats": repeats, "times": times,
        "note": ("kernel = fastfree.kernels (Triton, CUDA only); torch = the engine's --no-kernels path; "
                 "torch_compile = torch.compile(fullgraph) of it"),
        **run_metadata(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=20, help="back-to-back calls per timed repeat")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--variants", nargs="+", choices=["torch", "torch_compile", "kernel"])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="default: all")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    result = bench(args.repeats, args.calls, getattr(torch, args.dtype), device, args.variants, args.shapes)
    for cell, row in result["times"].items():
        print(f"{result['device_name']} {cell:>20}: " + ", ".join(
            f"{n} {v['median_us']:.1f} us ({v['speedup_over_torch']:.2f}x)" for n, v in row.items()), flush=True)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
