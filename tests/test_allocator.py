"""fastfree.allocator: glibc's malloc keeps large freed buffers on a CPU, unless told or tuned otherwise."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from fastfree.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD, TRIM_THRESHOLD, decide


class FakeMallopt:
    def __init__(self, refuse=()):
        self.calls, self.refuse = [], set(refuse)

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if param in self.refuse else 1


def test_both_thresholds_are_pinned():
    mallopt = FakeMallopt()
    s = decide({}, mallopt)
    assert mallopt.calls == [(M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 2**31 - 1)]
    assert s.applied and (s.mmap_threshold, s.trim_threshold) == (MMAP_THRESHOLD, TRIM_THRESHOLD)


@pytest.mark.parametrize("environ, says", [
    ({"FASTFREE_MALLOC": "system"}, "FASTFREE_MALLOC=system"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, "GLIBC_TUNABLES"),
])
def test_the_environments_choice_is_left_alone(environ, says):
    mallopt = FakeMallopt()
    s = decide(environ, mallopt)
    assert mallopt.calls == [] and not s.applied and says in s.reason


def test_other_tunables_or_another_libc_change_nothing():
    mallopt = FakeMallopt()
    assert decide({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, mallopt).applied and len(mallopt.calls) == 2
    s = decide({}, None)
    assert not s.applied and "not glibc" in s.reason


def test_an_older_glibc_refusing_the_mmap_threshold_still_keeps_the_trim_one():
    s = decide({}, FakeMallopt(refuse={M_MMAP_THRESHOLD}))
    assert s.applied and s.mmap_threshold is None and s.trim_threshold == TRIM_THRESHOLD
    assert not decide({}, FakeMallopt(refuse={M_MMAP_THRESHOLD, M_TRIM_THRESHOLD})).applied


# In a fresh process each (the setting is process-wide): 64 MiB tensors made and freed in a loop.
_PROBE = textwrap.dedent("""
    import json, resource, torch
    from fastfree.commands.common import run_metadata
    from fastfree.device import resolve_device
    device = resolve_device("cpu")  # what every command does first
    for _ in range(4):
        torch.ones(1 << 24).sum()  # the first ones are new memory either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        torch.ones(1 << 24).sum()  # 64 MiB: above glibc's own (adaptive) mmap threshold of at most 32 MiB
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"faults": faults, "malloc": run_metadata(device)["malloc"]}))
""")


def _probe(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**environ, **env}, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_on_the_cpu_freed_tensors_are_reused_instead_of_faulted_in_again():
    kept, system = _probe(), _probe(FASTFREE_MALLOC="system")
    assert kept["malloc"]["applied"] and not system["malloc"]["applied"]
    pages = 8 * (64 << 20) // 4096
    # glibc's defaults: every tensor is a fresh mmap, each page faulted in again (measured: ~all of them)
    assert system["faults"] > pages // 2, system
    # reused: measured 0 faults in most runs, in some one tensor's pages once (16,384), never more
    assert kept["faults"] <= pages // 4, kept
