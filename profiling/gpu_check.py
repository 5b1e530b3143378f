"""One call on a lent GPU: the GPU-only tests plus the benchmarks, JSON into one folder.

    PYTHONPATH=. python profiling/gpu_check.py --out $OUT          (or python -m fastfree.profiling.gpu_check)

Runs, each bounded so the whole call stays well inside 10 minutes:
1. `pytest -m gpu` (the tests that need CUDA; they skip on a CPU) -> gpu_tests.txt
2. pool pretraining, batched vs one-by-one (100 teachers, 5 steps)   -> bench_pool.json
3. meta-test adaptation, vmapped vs sequential (600 tasks, 1 and 5 shots) -> bench_metatest_{1,5}shot.json
4. optionally the real CIFAR-FS random baseline, when --cifar-fs points at the pickles.
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
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    steps = {
        "gpu_tests": _run([py, "-m", "pytest", "-m", "gpu", "-q", "tests"], out / "gpu_tests.txt", 240),
        "bench_pool": _run([py, "-m", "fastfree.profiling.bench_pool", "--teachers", "100", "--steps", "5",
                            "--repeats", "3", "--json", str(out / "bench_pool.json")], out / "bench_pool.txt", 240),
    }
    for shots in (1, 5):
        steps[f"bench_metatest_{shots}shot"] = _run(
            [py, "-m", "fastfree.profiling.bench_metatest", "--tasks", "200", "--chunk", "100", "--shots", str(shots),
             "--json", str(out / f"bench_metatest_{shots}shot.json")], out / f"bench_metatest_{shots}shot.txt", 120)
    if args.cifar_fs:
        steps["cifar_fs_random"] = _run(
            [py, "-m", "fastfree", "eval", "--preset", "cifar-fs", "--data-root", args.cifar_fs, "--method", "random",
             "--json", str(out / "cifar_fs_random.json")], out / "cifar_fs_random.txt", 180)
    import torch

    summary = {
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": steps,
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(s["rc"] == 0 for s in steps.values()) else 1


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # not installed
        return None


if __name__ == "__main__":
    raise SystemExit(main())
