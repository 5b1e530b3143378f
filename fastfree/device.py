"""Device selection shared by the commands."""

from __future__ import annotations

import torch

from fastfree.errors import FastFreeError


def resolve_device(name: str | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu; an explicit cuda without CUDA is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FastFreeError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastFreeError(f"--device {name} asked for CUDA but torch sees no GPU: use --device cpu")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


ENGINES = ("auto", "batched", "reference")


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
