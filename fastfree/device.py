"""Device selection shared by the commands."""

from __future__ import annotations

import torch

from fastfree.errors import FastFreeError


def resolve_device(name: str | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu; an explicit cuda without CUDA is an error.

    A CUDA device is made the current one and returned with its index: CUDA graphs capture on the
    current device's streams, the Triton kernels launch there and the phase timer's events record
    there, so with cuda:1 not current a graph would capture nothing (pytorch/pytorch#87894) and a
    kernel would refuse its pointers (triton-lang/triton#2441)."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FastFreeError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cpu":
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


ENGINES = ("auto", "batched", "reference")
# the meta-test's: threads adapts whole tasks side by side, one intra-op thread each (fastfree.metatest.adapt)
METATEST_ENGINES = (*ENGINES, "threads")


def resolve_engine(engine: str, device: torch.device) -> str:
    """'auto' -> batched (vmap) on CUDA, the per-model loop on a CPU.

    Measured on a 2-core CPU (torch 2.13): vmap turns the per-model convolutions into one
    grouped convolution, which oneDNN runs 2-3x slower than a loop of plain ones, so the
    batched paths only pay off on a GPU, where they save kernel launches.
    """
    if engine not in ENGINES:
        raise FastFreeError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "batched" if device.type == "cuda" else "reference"
    return engine


def resolve_metatest_engine(engine: str, device: torch.device) -> str:
    """The meta-test's engine: 'auto' -> batched on CUDA; on a CPU with more than one torch thread,
    threads (tasks side by side, one thread each: 1.3-1.5x the one-task-at-a-time loop on 2 threads,
    measured on a 2-core CPU, where a small task keeps two intra-op threads half idle), else reference."""
    if engine not in METATEST_ENGINES:
        raise FastFreeError(f"unknown meta-test engine {engine!r}: use one of {', '.join(METATEST_ENGINES)}")
    if engine == "auto":
        if device.type == "cuda":
            return "batched"
        return "threads" if torch.get_num_threads() > 1 else "reference"
    return engine
