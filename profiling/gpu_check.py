"""One call on a lent GPU: the GPU-only tests plus the benchmarks, bundled into one folder.

    PYTHONPATH=. python profiling/gpu_check.py --out $OUT          (or python -m fastfree.profiling.gpu_check)

Each step runs in its own process with its own time limit; the whole stays within --budget
(seconds) so the device call ends inside its limit (steps past the budget are recorded as
skipped, and `--steps` reruns a chosen few). Most important first:

  gpu_tests          `pytest -m gpu -k "not compile"`: CUDA-graph replay == eager over 3 epochs, the
                     graphed epoch == the reference in float64, bf16 vs fp32 on CUDA, the Triton losses
                     in bf16/fp16/inside a graph, graphed replay, pool, meta-test (about 40 s)
  bench_five_32px    one FIVE epoch, reference vs fast (compiled + graphed in bf16, graphed eager in bf16
                     and fp32; teachers vmapped and looped; without the fused losses, without the fused
                     upsampling), 32 px (issue 4's 20x target; issue 5's effect on an epoch)
  bench_replay       one replay meta-batch (10 second-order MAML tasks): per task vs vmapped vs
                     vmapped in one CUDA graph (25x)
  bench_iteration    one whole FREE iteration, reference vs fast (--amp --compile), each phase's share
                     (bench_iteration_eager: the eager fast engine alone, only if that one failed)
  bench_kernels      the fused losses vs torch vs torch.compile (issue 5)
  train_demo         `fastfree train --preset demo --amp --compile` for 6 iterations, as users run it
                     (train_demo_resume: lengthened to 8 by --resume, from its checkpoint)
  bench_five_84px    the FIVE epoch at 84 px (8x), teachers vmapped and looped
  gpu_tests_compiled the compiled GPU tests (graph replay of the compiled epoch, looped + compiled
                     == reference, full-graph compile of the losses)
  five_kernels       the top CUDA kernels of eager and compiled epochs, vmapped and looped, the generator's
                     upsampling fused and not (where the GPU time goes)
  bench_iteration_loop  the fast iteration with FIVE's teachers looped (--teacher-map loop)
  profile_run_bf16   `fastfree profile run`, bf16 + compile: FLOPs, MFU, GPU-hours, memory, NVML
  profile_run_fp32, bench_metatest_1shot, bench_metatest_5shot, bench_five_32px_more (fp32 compiled,
  without TF32, channels-last, compiled without graphs or the fused upsampling), bench_pool,
  cifar_fs_random (with --cifar-fs)

The device returns at most 8 files, so everything is bundled, and rewritten after every step
(a call cut off at its limit still brings back what was done): `gpu_check.json` (device,
versions, date, each step's command, exit status, time and output tail, and every result JSON)
and `gpu_check_logs.tar.gz` (the full logs and JSONs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def steps(py: str, work: Path, cifar_fs: str | None) -> list[tuple[str, list[str], int, str | None]]:
    """(name, command, time limit in seconds, the step whose failure it needs or None), most important first."""
    ff = [py, "-m", "fastfree"]
    # the paper's configuration (cifar-fs preset: b=4, k=5, ngf 64, 20 images/class, replay 10 tasks) on
    # the built-in data (same shapes; ../shared does not travel), freshly initialised teachers
    paper = ["--preset", "cifar-fs", "--data", "builtin", "--images-per-class", "100"]

    def js(name: str) -> list[str]:
        return ["--json", str(work / f"{name}.json")]

    def five(px: int, variants: list[str], limit: int, name: str) -> tuple[str, list[str], int, None]:
        return (name, [py, "-m", "fastfree.profiling.bench_five", "--image-size", str(px), "--repeats", "5",
                       "--variants", *variants, *js(name)], limit, None)  # saved per variant: a time-out keeps them

    # -v: a test run killed at its limit still names every test that passed before it
    pytest = [py, "-m", "pytest", "-m", "gpu", "-v", "-rfEs", "-p", "no:cacheprovider"]
    if importlib.util.find_spec("xdist"):  # correctness only, no timing: compile-heavy tests in parallel
        pytest += ["-n", "6"]
    if importlib.util.find_spec("pytest_timeout"):  # a hung test is named, and the others still run
        pytest += ["--timeout", "100"]
    iteration = [*ff, "bench", *paper, "--only", "iteration", "--repeats", "3"]
    demo = [*ff, "train", "--preset", "demo", "--amp", "--compile", "--eval-every", "3", "--run-dir", str(work / "demo")]
    # Seen on an H100 (2026-11-26): compilation dominates. The 32 px step with the reference and two
    # compiled variants took 150 s (cut off in a third), gpu_tests 114 s with its compiled tests, 36 s
    # without. The first steps fit one 540 s call: correctness without compiling, then issue 4's and
    # issue 5's headline numbers; the rest runs as far as the budget goes.
    out = [
        # CUDA-graph replay == eager, the graphed epoch == the reference in float64, bf16, the Triton
        # losses in bf16/fp16 and inside a graph, graphed replay, pool, meta-test (the compiled ones later)
        ("gpu_tests", [*pytest, "-k", "not compile", "tests"], 100, None),
        # the fused losses' effect on a whole epoch (issue 5): fast_graphs_bf16 vs fast_graphs_nokernels_bf16;
        # the generator's fused upsampling (engine/upsample_conv.py): vs fast_graphs_unfused_bf16;
        # vmap's grouped convolutions vs a loop's plain ones (fast_loop_*)
        five(32, ["reference", "fast_compile_graphs_bf16", "fast_loop_compile_graphs_bf16", "fast_graphs_bf16",
                  "fast_loop_graphs_bf16", "fast_graphs_nokernels_bf16", "fast_graphs_unfused_bf16", "fast_graphs"],
             180, "bench_five_32px"),
        ("bench_replay", [py, "-m", "fastfree.profiling.bench_replay", "--repeats", "5", *js("bench_replay")], 60,
         None),
        # the whole iteration as users run it (fastfree train --amp --compile), each phase's share
        ("bench_iteration", [*iteration, "--amp", "--compile", *js("bench_iteration")], 150, None),
        # only if the compiled iteration failed or ran out of time: the eager fast engine's phase shares
        # (its reference was timed above)
        ("bench_iteration_eager", [*iteration, "--amp", "--fast-only", *js("bench_iteration_eager")], 60,
         "bench_iteration"),
        ("bench_kernels", [py, "-m", "fastfree.profiling.bench_kernels", "--repeats", "5", *js("bench_kernels")], 60,
         None),
        # the product as users run it (never yet on a GPU): the demo job with --amp --compile (pool, FREE,
        # meta-val, meta-test), then the same run lengthened by --resume from its checkpoint
        ("train_demo", [*demo, "--iterations", "6", *js("train_demo")], 150, None),
        ("train_demo_resume", [*demo, "--iterations", "8", "--resume", *js("train_demo_resume")], 90, None),
        five(84, ["reference", "fast_compile_graphs_bf16", "fast_loop_compile_graphs_bf16", "fast_graphs_bf16",
                  "reference_bf16"], 150, "bench_five_84px"),
        ("gpu_tests_compiled", [*pytest, "-k", "compile", "tests"], 150, None),
        # where the epoch's GPU time goes (eager variants: a graph shows as one launch)
        ("five_kernels", [py, "-m", "fastfree.profiling.five_kernels", "--image-size", "32", *js("five_kernels")], 120,
         None),
        # the whole iteration again with FIVE's teachers looped (replay stays vmapped and graphed)
        ("bench_iteration_loop", [*iteration, "--amp", "--compile", "--teacher-map", "loop", "--fast-only",
                                  *js("bench_iteration_loop")], 120, None),
        ("profile_run_bf16", [*ff, "profile", "run", *paper, "--amp", "--compile", "--iterations", "3",
                              *js("profile_run_bf16")], 120, None),
        ("profile_run_fp32", [*ff, "profile", "run", *paper, "--iterations", "3", *js("profile_run_fp32")], 90, None),
    ]
    out += [(f"bench_metatest_{s}shot", [py, "-m", "fastfree.profiling.bench_metatest", "--tasks", "200", "--chunk",
                                         "100", "--shots", str(s), *js(f"bench_metatest_{s}shot")], 60, None)
            for s in (1, 5)]
    out += [
        five(32, ["reference", "fast_loop_graphs", "fast_compile_graphs", "fast_loop_compile_graphs",
                  "fast_graphs_notf32", "reference_bf16", "fast_compile", "fast_compile_graphs_channels_last_bf16",
                  "fast_compile_graphs_unfused_bf16"], 180, "bench_five_32px_more"),
        ("bench_pool", [py, "-m", "fastfree.profiling.bench_pool", "--teachers", "100", "--steps", "5",
                        "--repeats", "3", *js("bench_pool")], 90, None),
    ]
    if cifar_fs:
        out.append(("cifar_fs_random", [*ff, "eval", "--preset", "cifar-fs", "--data-root", cifar_fs, "--method",
                                        "random", *js("cifar_fs_random")], 180, None))
    return out


def run_step(cmd: list[str], log: Path, timeout: int, env: dict) -> dict:
    """Run in a new process group, killed whole at the limit (pytest-xdist's workers too)."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            f.write(f"\n[gpu_check] killed at its limit of {timeout} s\n")
            rc = 124
    tail = log.read_text(errors="replace").strip().splitlines()[-25:]
    return {"cmd": cmd, "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": tail}


def environment() -> dict:
    """Device, versions and date, read in a child (this process stays free of torch and CUDA)."""
    code = ("import json, torch, triton; "
            "p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None; "
            "print(json.dumps({'device_name': p.name if p else 'no CUDA device', "
            "'multiprocessors': p.multi_processor_count if p else None, "
            "'memory_gib': round(p.total_memory / 2**30, 1) if p else None, 'torch': torch.__version__, "
            "'cuda': torch.version.cuda, 'triton': triton.__version__}))")
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
        info = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr[-2000:]}
    except Exception as e:  # recorded, not fatal: the steps say more
        info = {"error": repr(e)}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip()
    except Exception:  # no nvidia-smi (a CPU machine)
        pass
    return info


def importable_env() -> dict:
    """The environment for the steps: the repo on PYTHONPATH, and `fastfree.kernels` /
    `fastfree.profiling` importable even without `pip install -e .` (which maps the top-level
    kernels/ and profiling/ into the package): then links inside fastfree/ stand in for it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    probe = [sys.executable, "-c", "import fastfree.kernels, fastfree.profiling"]
    if subprocess.run(probe, env=env, cwd=REPO, capture_output=True, timeout=120).returncode != 0:
        for name in ("kernels", "profiling"):
            link = REPO / "fastfree" / name
            if not link.exists():
                link.symlink_to(Path("..") / name)
    return env


def bundle(out: Path, work: Path, summary: dict) -> None:
    """Rewrite the two files that come back: the summary with every result JSON, and the logs."""
    results = {}
    for f in sorted(work.glob("*.json")):
        try:
            results[f.stem] = json.loads(f.read_text())
        except ValueError:  # a JSON half-written when its step was killed
            results[f.stem] = {"unreadable": f.name}
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps({**summary, "results": results}, indent=2, default=str))
    os.replace(tmp, out / "gpu_check.json")
    with tarfile.open(out / "gpu_check_logs.tar.gz.tmp", "w:gz") as tar:
        for f in sorted(work.iterdir()):
            tar.add(f, arcname=f.name)
    os.replace(out / "gpu_check_logs.tar.gz.tmp", out / "gpu_check_logs.tar.gz")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check_logs.tar.gz")
    p.add_argument("--cifar-fs", help="folder with the CIFAR-FS pickles (optional)")
    p.add_argument("--budget", type=int, default=540, help="seconds; steps that would start past it are skipped")
    p.add_argument("--steps", nargs="+", help="run only these steps (default: all, in order)")
    args = p.parse_args(argv)
    deadline = time.perf_counter() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    plan = steps(sys.executable, work, args.cifar_fs)
    names = [step[0] for step in plan]
    unknown = set(args.steps or []) - set(names)
    if unknown:
        p.error(f"unknown steps {sorted(unknown)}; choose from {names}")
    env = importable_env()
    summary = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": args.budget,
               **environment(), "steps": {}}
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}), flush=True)
    for name, cmd, limit, needs_failed in plan:
        if args.steps and name not in args.steps:
            continue
        if needs_failed and not args.steps and summary["steps"].get(needs_failed, {}).get("rc") in (0, None):
            continue  # a fallback: its step ran fine (or did not run); named in --steps, it runs
        left = int(deadline - time.perf_counter())
        if left < 20:
            summary["steps"][name] = {"cmd": cmd, "rc": None, "skipped": "out of time budget"}
            print(f"[skipped] {name}: out of time budget", flush=True)
            continue
        r = run_step(cmd, work / f"{name}.txt", min(limit, left), env)
        summary["steps"][name] = r
        print(f"[{r['rc']}] {name} {r['seconds']:.0f} s\n    " + "\n    ".join(r["tail"][-8:]), flush=True)
        bundle(out, work, summary)
    bundle(out, work, summary)
    return 0 if all(s["rc"] in (0, None) for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
