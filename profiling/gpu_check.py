"""One call on a lent GPU: the GPU-only tests plus the benchmarks, JSON into one folder.

    PYTHONPATH=. python profiling/gpu_check.py --out $OUT          (or python -m fastfree.profiling.gpu_check)

Runs, most important first, each bounded and the whole within --budget (540 s) so the call stays
inside the device's 10-minute limit (steps past the budget are recorded as skipped):
1. one FIVE epoch, reference vs fast (eager, compiled, CUDA graph, without kernels, bf16), 32 px
   -> bench_five_32px.json
2. one whole FREE iteration, reference vs fast (compiled), phase shares -> bench_iteration.json
3. `fastfree profile run` of the paper's configuration, bf16 + compile: time, FLOPs and MFU per
   phase, GPU-hours, memory, NVML telemetry -> profile_run_bf16.json
4. one replay meta-batch (10 second-order MAML tasks), vmapped vs per-task -> bench_replay.json
5. `pytest -m gpu` (graph replay == eager over 3 epochs, Triton bf16/fp16/graph, CUDA
   equivalence, DALI's GPU decoder; they skip on a CPU) -> gpu_tests.txt
6. the fused losses vs torch vs torch.compile -> bench_kernels.json
7. the FIVE epoch at 84 px -> bench_five_84px.json; 8. profile run in fp32 (tf32 convolutions)
9. pool pretraining, batched vs one-by-one (100 teachers, 5 steps) -> bench_pool.json
10. meta-test adaptation, vmapped vs sequential (200 tasks, 1 and 5 shots) -> bench_metatest_{1,5}shot.json
11. optionally the real CIFAR-FS random baseline, when --cifar-fs points at the pickles.
A summary with the device, versions and date goes to gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _run(cmd: list[str], log: Path, timeout: int) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        log.write_text(p.stdout + "\n" + p.stderr)
        rc = p.returncode
    except subprocess.TimeoutExpired as e:
        log.write_text(f"timed out after {timeout} s\n{e.stdout or ''}\n{e.stderr or ''}")
        rc = 124
    tail = log.read_text().strip().splitlines()[-3:]
    print(f"[{rc}] {' '.join(cmd[2:5])} ... {time.perf_counter() - t0:.0f} s | {' / '.join(tail)}", flush=True)
    return {"cmd": cmd, "rc": rc, "seconds": time.perf_counter() - t0, "tail": tail}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--cifar-fs", help="folder with the CIFAR-FS pickles (optional)")
    p.add_argument("--budget", type=int, default=540, help="seconds; later steps are skipped past it")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    deadline = time.perf_counter() + args.budget  # the device call's limit is 600 s: stop starting steps in time

    def run(name: str, cmd: list[str], timeout: int) -> None:
        left = int(deadline - time.perf_counter())
        if left < 20:
            steps[name] = {"cmd": cmd, "rc": None, "skipped": "out of time budget"}
            return
        steps[name] = _run(cmd, out / f"{name}.txt", min(timeout, left))

    steps: dict[str, dict] = {}
    ff = [py, "-m", "fastfree"]
    # the paper's configuration (cifar-fs preset: b=4, k=5, ngf 64, 20 images/class, replay 10 tasks) on
    # the built-in data (same shapes; ../shared does not travel), freshly initialised teachers
    paper = ["--preset", "cifar-fs", "--data", "builtin", "--images-per-class", "100"]
    # most important first: the fast engine's FIVE epoch (issue 4's benchmark) at 32 px
    run("bench_five_32px", [py, "-m", "fastfree.profiling.bench_five", "--image-size", "32", "--repeats", "5",
                            "--json", str(out / "bench_five_32px.json")], 240)  # saved per variant: a timeout keeps them
    # the whole iteration, reference vs fast, with phase shares (what users wait for)
    run("bench_iteration", [*ff, "bench", *paper, "--only", "iteration", "--repeats", "3", "--compile",
                            "--json", str(out / "bench_iteration.json")], 200)
    # where the fast iteration's time and FLOPs go: MFU, GPU-hours, memory, NVML
    run("profile_run_bf16", [*ff, "profile", "run", *paper, "--amp", "--compile", "--iterations", "3",
                             "--json", str(out / "profile_run_bf16.json")], 150)
    run("bench_replay", [py, "-m", "fastfree.profiling.bench_replay", "--repeats", "5",
                         "--json", str(out / "bench_replay.json")], 90)
    run("gpu_tests", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"], 180)
    run("bench_kernels", [py, "-m", "fastfree.profiling.bench_kernels", "--repeats", "5",
                          "--json", str(out / "bench_kernels.json")], 90)
    run("bench_five_84px", [py, "-m", "fastfree.profiling.bench_five", "--image-size", "84", "--repeats", "5",
                            "--json", str(out / "bench_five_84px.json")], 200)
    run("profile_run_fp32", [*ff, "profile", "run", *paper, "--iterations", "3",
                             "--json", str(out / "profile_run_fp32.json")], 120)
    run("bench_pool", [py, "-m", "fastfree.profiling.bench_pool", "--teachers", "100", "--steps", "5",
                       "--repeats", "3", "--json", str(out / "bench_pool.json")], 120)
    for shots in (1, 5):
        run(f"bench_metatest_{shots}shot",
            [py, "-m", "fastfree.profiling.bench_metatest", "--tasks", "200", "--chunk", "100", "--shots", str(shots),
             "--json", str(out / f"bench_metatest_{shots}shot.json")], 60)
    if args.cifar_fs:
        run("cifar_fs_random", [py, "-m", "fastfree", "eval", "--preset", "cifar-fs", "--data-root", args.cifar_fs,
                                "--method", "random", "--json", str(out / "cifar_fs_random.json")], 180)
    import torch

    summary = {
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": steps,
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(s["rc"] in (0, None) for s in steps.values()) else 1


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # not installed
        return None


if __name__ == "__main__":
    raise SystemExit(main())
