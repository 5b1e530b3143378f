"""On a CPU, glibc's malloc keeps large freed buffers for reuse instead of handing them back to the kernel.

torch's CPU tensors come from malloc. glibc serves a request above its mmap threshold (at most 32
MiB while it adapts the threshold itself) with a fresh mmap and unmaps it on free, so every such
tensor is new memory that the kernel faults in and zeroes page by page, as system time. A FIVE epoch
at 84 px allocates and frees activations of up to 180 MB at every step (100 images x 64 channels x
84 x 84 x 4 bytes): measured on the 2-core CPU, 87-90 of a benchmark's 226-236 CPU-seconds were
system time, and with the thresholds below 11-14 s, the fast epoch 1.8x faster and the reference
1.6x (`profiling/results/2026-12-04-cpu-malloc-thresholds.json`; at 32 px 1.05-1.2x, the demo's
small tensors no gain: 1-7 % slower in three alternating pairs, not seen in its parts alone). The
same pinning of glibc's thresholds at start-up serves other tools whose per-step buffers straddle
the adaptive threshold (e.g. sonos/tract#2783). The price is memory: freed buffers stay in the
process (the 84 px epoch's peak resident size 3.0 -> 4.6-5.0 GB, the demo's 1.5 -> 1.6 GB).

Process-wide, so applied once, by resolve_device when a command or benchmark computes on a CPU,
never by importing fastfree. Left alone where the environment already tunes glibc's malloc
(MALLOC_*_ variables, GLIBC_TUNABLES with glibc.malloc.*), with FASTFREE_MALLOC=system, and off
glibc (macOS, musl), where mallopt does not exist or means something else.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from dataclasses import dataclass
from typing import Callable, Mapping

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # requests below 1 GiB come from the heap, where freed memory is reused
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the heap's free top is (in effect) never given back
OPT_OUT = "FASTFREE_MALLOC"  # =system: glibc's own adaptive thresholds
_ENVIRONMENT_TUNES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@dataclass(frozen=True)
class MallocSettings:
    """What was done to glibc's malloc, and why (recorded in every command's JSON)."""

    applied: bool
    reason: str
    mmap_threshold: int | None = None
    trim_threshold: int | None = None


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    return getattr(ctypes.CDLL(None), "mallopt", None)


def decide(environ: Mapping[str, str], mallopt: Callable[[int, int], int] | None) -> MallocSettings:
    """Pin glibc's thresholds through mallopt unless the environment or the platform says otherwise."""
    if environ.get(OPT_OUT, "").strip().lower() == "system":
        return MallocSettings(False, f"{OPT_OUT}=system: glibc's adaptive thresholds")
    tuned = [k for k in _ENVIRONMENT_TUNES if k in environ]
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        tuned.append("GLIBC_TUNABLES")
    if tuned:
        return MallocSettings(False, f"the environment tunes malloc ({', '.join(tuned)}): left as it is")
    if mallopt is None:
        return MallocSettings(False, "not glibc: its allocator left as it is")
    # mallopt returns 1 on success; an older glibc refuses an mmap threshold above 32 MiB
    mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not (mmap_ok or trim_ok):
        return MallocSettings(False, "glibc refused both thresholds")
    return MallocSettings(True, "freed buffers kept for reuse (fastfree/allocator.py)",
                          MMAP_THRESHOLD if mmap_ok else None, TRIM_THRESHOLD if trim_ok else None)


_settings: MallocSettings | None = None


def keep_freed_memory() -> MallocSettings:
    """Pin glibc's malloc thresholds for this process, once; later calls return the first decision."""
    global _settings
    if _settings is None:
        _settings = decide(os.environ, _glibc_mallopt())
    return _settings


def current() -> MallocSettings | None:
    """This process's decision, None where no command has computed on a CPU yet."""
    return _settings


__all__ = ["MallocSettings", "current", "decide", "keep_freed_memory"]
