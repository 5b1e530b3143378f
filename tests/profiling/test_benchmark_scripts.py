"""The benchmark scripts run end to end on tiny sizes and write their JSON (they assert no speed)."""

import json

import pytest
import torch

from fastfree.profiling import bench_metatest, bench_pool
from fastfree.profiling.timing import fastest
from fastfree.threads import torch_threads


# With more than one torch thread on a CPU the scripts also time `threads` (what `auto` picks there):
# both thread counts are run, whatever the count of the process running the tests.
@pytest.mark.parametrize("threads", [1, 2])
def test_bench_pool_runs(tmp_path, threads):
    out = tmp_path / "b.json"
    with torch_threads(threads):
        assert bench_pool.main(["--teachers", "2", "--steps", "1", "--repeats", "1", "--batch-size", "16",
                                "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["times"]) == {"batched", "one_by_one"} | ({"threads"} if threads > 1 else set())
    assert r["speedup_batched_over_one_by_one"] > 0 and r["device_name"] and r["torch"]


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_metatest_runs(tmp_path, threads):
    out = tmp_path / "m.json"
    with torch_threads(threads):
        assert bench_metatest.main(["--tasks", "2", "--chunk", "2", "--shots", "1", "--repeats", "1",
                                    "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["times"]) == {"batched", "reference"} | ({"threads"} if threads > 1 else set())
    assert r[f"speedup_{fastest(r)}_over_reference"] > 0  # the fastest engine against the reference


def test_bench_five_runs(tmp_path):
    from fastfree.profiling import bench_five

    out = tmp_path / "f.json"
    assert bench_five.main(["--b", "2", "--k", "1", "--per-class", "2", "--ngf", "4", "--width", "4", "--image-size",
                            "16", "--repeats", "1", "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["times"]) == {"reference", "fast", "fast_unfused"} and r["speedup_over_reference"]["reference"] == 1.0


@pytest.mark.filterwarnings("error:.*Profiler clears events:UserWarning")  # torch 2.11's, without acc_events
def test_five_kernels_profiles_operators_on_a_cpu(tmp_path):
    """On a CPU the profile ranks operators by self CPU time, per profiled epoch."""
    from fastfree.profiling import five_kernels

    out = tmp_path / "k.json"
    shape = ["--b", "2", "--k", "1", "--per-class", "2", "--ngf", "4", "--width", "4", "--image-size", "16"]
    assert five_kernels.main([*shape, "--device", "cpu", "--epochs", "2", "--top", "200", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["variants"]) == {"reference", "fast", "fast_unfused"} and r["b"] == 2 and r["epochs_profiled"] == 2
    for v in r["variants"].values():
        assert v["aten_ops"] > 100 and v["cpu_ms"] > 0
        assert any(t["kernel"] == "aten::convolution_backward" for t in v["top"])
    # every operator is listed (--top 200): the fused generator upsamples nowhere, the others do
    upsampling = {n: any(t["kernel"].startswith("aten::upsample_nearest2d") for t in v["top"])
                  for n, v in r["variants"].items()}
    assert upsampling == {"reference": True, "fast": False, "fast_unfused": True}


def test_five_kernels_rejects_zero_epochs(capsys):
    import pytest

    from fastfree.profiling import five_kernels

    with pytest.raises(SystemExit):
        five_kernels.main(["--device", "cpu", "--epochs", "0"])
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_gpu_check_skips_steps_past_its_budget(tmp_path):
    from fastfree.profiling import gpu_check

    assert gpu_check.main(["--out", str(tmp_path), "--budget", "0"]) == 0
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(s.get("skipped") for s in r["steps"].values()) and "bench_five_32px" in r["steps"]


def test_every_five_variant_the_gpu_check_asks_for_exists(tmp_path):
    """A misspelt variant would cost a lent GPU's minutes: the names are checked here, on the CPU."""
    import sys

    from fastfree.profiling import bench_five, five_kernels, gpu_check

    asked = []
    for _, cmd, _, _ in gpu_check.steps(sys.executable, tmp_path, None):
        if "fastfree.profiling.bench_five" in cmd:
            asked += cmd[cmd.index("--variants") + 1:cmd.index("--json")]
    asked += five_kernels.DEFAULT_VARIANTS + bench_five.variants_for(torch.device("cuda"))
    assert len(asked) > 20
    assert [n for n in asked if not bench_five.is_variant(n)] == []
    assert not bench_five.is_variant("fast_compile_graph_bf16")  # one letter off


def test_the_gpu_checks_fastfree_commands_parse(tmp_path):
    """A flag the CLI does not know would fail its step on the lent GPU: each one is parsed here."""
    import sys

    from fastfree.cli import build_parser
    from fastfree.profiling import gpu_check

    commands = [cmd for _, cmd, _, _ in gpu_check.steps(sys.executable, tmp_path, "/data/cifar-fs")
                if cmd[1:3] == ["-m", "fastfree"]]
    assert len(commands) >= 6
    for cmd in commands:
        build_parser().parse_args(cmd[3:])  # SystemExit (a failed test) on a flag it does not know


def test_the_gpu_checks_two_test_steps_cover_every_gpu_test_once(tmp_path):
    """gpu_tests (no compiling, first) and gpu_tests_compiled (later) split `pytest -m gpu` between them."""
    import subprocess
    import sys
    from pathlib import Path

    from fastfree.profiling import gpu_check

    plan = {name: cmd for name, cmd, _, _ in gpu_check.steps(sys.executable, tmp_path, None)}
    repo = Path(gpu_check.__file__).resolve().parents[1]

    def collecting(cmd: list[str]) -> subprocess.Popen:  # the three collections side by side (~7 s each)
        select = cmd[cmd.index("-k"):cmd.index("-k") + 2] if "-k" in cmd else []
        return subprocess.Popen([sys.executable, "-m", "pytest", "-m", "gpu", *select, "--collect-only", "-q", "-p",
                                 "no:cacheprovider", "tests"], stdout=subprocess.PIPE, text=True, cwd=repo)

    def collected(proc: subprocess.Popen) -> set[str]:
        return {line for line in proc.communicate()[0].splitlines() if "::" in line}

    fast, compiled, every = map(collected, [collecting(plan["gpu_tests"]), collecting(plan["gpu_tests_compiled"]),
                                            collecting([])])
    assert fast and compiled and not fast & compiled and fast | compiled == every


def test_bench_kernels_runs_the_torch_variants_on_a_cpu(tmp_path):
    from fastfree.profiling import bench_kernels

    out = tmp_path / "k.json"
    assert bench_kernels.main(["--device", "cpu", "--repeats", "1", "--calls", "2", "--variants", "torch",
                               "--shapes", "engine", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["times"]) == {"inversion_engine", "distillation_engine"}
    assert r["times"]["inversion_engine"]["torch"]["speedup_over_torch"] == 1.0
    assert "kernel" not in r["times"]["inversion_engine"]  # the Triton kernels need CUDA


def test_eq1_torch_form_equals_the_engine_loss():
    """The benchmark's torch baseline is the engine's --no-kernels loss."""
    import torch

    from fastfree.engine.five import eq1_rows
    from fastfree.profiling.bench_kernels import eq1_torch

    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(4, 10, 5, generator=g), torch.randn(4, 10, 5, generator=g)
    y = torch.randint(0, 5, (4, 10), generator=g)
    want = torch.stack([eq1_rows(t[i], s[i], y[i], True, False)[0] for i in range(4)])
    torch.testing.assert_close(eq1_torch(t, s, y), want)
