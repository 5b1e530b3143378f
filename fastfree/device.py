"""Device selection shared by the commands."""

from __future__ import annotations

import torch

from fastfree.allocator import keep_freed_memory
from fastfree.errors import FastFreeError


def resolve_device(name: str | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu; an explicit cuda without CUDA is an error.

    A CUDA device is made the current one and returned with its index: CUDA graphs capture on the
    current device's streams, the Triton kernels launch there and the phase timer's events record
    there, so with cuda:1 not current a graph would capture nothing (pytorch/pytorch#87894) and a
    kernel would refuse its pointers (triton-lang/triton#2441). On the CPU, glibc's malloc is set to
    keep large freed buffers for reuse (fastfree/allocator.py: 1.8x on an 84 px FIVE epoch)."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FastFreeError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cpu":
        keep_freed_memory()  # glibc's malloc keeps large freed tensors for reuse (fastfree/allocator.py)
        return torch.device("cpu")
    if device.type != "cuda":  # mps, xpu, meta, ...: torch may parse them, fastfree does not run there
        raise FastFreeError(f"--device {name}: fastfree runs on cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise FastFreeError(f"--device {name} asked for CUDA but torch sees no GPU: use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise FastFreeError(f"--device {name}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    if device.index is not None:
        torch.cuda.set_device(device)
    return torch.device("cuda", torch.cuda.current_device())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


# The meta-test's and pretraining's engines. batched: vmap over models or tasks; reference: one at a
# time; threads: the reference's whole tasks (a task's adaptation, a teacher's training) side by side,
# one intra-op thread each (fastfree.threads)
ENGINES = ("auto", "batched", "reference", "threads")


def _resolve_with_threads(engine: str, device: torch.device, what: str) -> str:
    """'auto' -> batched on CUDA (vmap saves kernel launches there); on a CPU with more than one torch
    thread, threads; else the reference's loop.

    Why not batched on a CPU: measured on 2 cores (torch 2.13), vmap turns the per-model
    convolutions into one grouped convolution, which oneDNN runs 2-3x slower than a loop of plain
    ones. Why threads there: a few-shot task or a small teacher keeps two intra-op threads only
    partly busy, while whole tasks side by side overlap (torch releases the GIL in its operators).
    """
    if engine not in ENGINES:
        raise FastFreeError(f"unknown {what} engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "auto":
        if device.type == "cuda":
            return "batched"
        return "threads" if torch.get_num_threads() > 1 else "reference"
    return engine


def resolve_metatest_engine(engine: str, device: torch.device) -> str:
    """The meta-test's engine: 'auto' -> batched on CUDA; on a CPU with more than one torch thread,
    threads (tasks side by side, one thread each: 1.3-1.5x the one-task-at-a-time loop on 2 threads,
    measured on a 2-core CPU, where a small task keeps two intra-op threads half idle), else reference."""
    return _resolve_with_threads(engine, device, "meta-test")


def resolve_pool_engine(engine: str, device: torch.device) -> str:
    """Pretraining's engine: 'auto' -> batched on CUDA; on a CPU with more than one torch thread,
    threads (teachers side by side, one thread each: 1.46-1.79x the one-teacher-at-a-time loop on 2
    threads, measured on a 2-core CPU with the demo's teachers), else reference."""
    return _resolve_with_threads(engine, device, "pretraining")
