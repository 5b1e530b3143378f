"""Capture a pure function of tensors in one CUDA graph and replay it.

The function is run a few times on a side stream (warm-up: cuBLAS/cuDNN workspaces,
torch.compile's first compilation), then captured once against static copies of its inputs.
Each call copies the new inputs into those static buffers (device-to-device, no host
synchronisation) and replays the graph; the outputs are the graph's static buffers, which
the next replay overwrites: callers clone what they keep. Shapes, dtypes and non-tensor
arguments are fixed by the first call; a call that changes them is an error, not a silent
recapture.

If the capture itself fails (a RuntimeError from CUDA or torch while recording: an operation a
graph cannot hold), it warns once and runs the function eagerly from then on, with the same
values, slower; `fallback` keeps the reason for the profiler's report. Bad input (a
FastFreeError: e.g. CPU tensors) is not swallowed. The first H100 run found such an operation
in FIVE's epoch (a host-to-device copy, since removed): a run should slow down, not die.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from fastfree.errors import FastFreeError


class GraphedCallable:
    def __init__(self, fn: Callable, warmup: int = 3, name: str = "the function"):
        self.fn = fn
        self.warmup = warmup
        self.name = name  # for the fallback's warning
        self.graph: torch.cuda.CUDAGraph | None = None
        self.replays = 0
        self.fallback: str | None = None  # why capture failed, when it did (then every call runs eagerly)

    def _signature(self, flat: list) -> list:
        return [(tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in flat]

    def _capture(self, flat: list, spec) -> None:
        if not all(a.is_cuda for a in flat if isinstance(a, torch.Tensor)):
            raise FastFreeError("CUDA graphs need every tensor argument on the GPU: use --no-cuda-graphs off CUDA")
        self.static_in = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in flat]
        self.spec, self.signature = spec, self._signature(flat)
        args = tree_unflatten(self.static_in, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self.fn(*args)
        self.graph = graph

    def __call__(self, *args):
        if self.fallback is not None:
            return self.fn(*args)
        flat, spec = tree_flatten(args)
        if self.graph is None:
            stream = torch.cuda.current_stream() if torch.cuda.is_available() else None
            try:
                self._capture(flat, spec)
            except FastFreeError:
                raise
            except RuntimeError as e:
                # torch.cuda.graph's exit ends the capture before it restores the caller's stream, with no
                # finally: a capture CUDA invalidated leaves its capture stream current; put the caller's back
                if stream is not None:
                    torch.cuda.set_stream(stream)
                # CUDA's own error then only says the capture failed; the cause is the error it was handling
                cause = e.__context__ if isinstance(e.__context__, Exception) else e
                self.fallback = f"{type(cause).__name__}: {cause}"
                # the capture's static copies serve no eager call: freed, they leave room to a capture that ran
                # out of GPU memory
                self.static_in = self.static_out = None
                warnings.warn(f"CUDA-graph capture of {self.name} failed ({self.fallback}); running it eagerly "
                              "(same values, slower). --no-cuda-graphs skips the attempt", RuntimeWarning,
                              stacklevel=2)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                return self.fn(*args)
        elif spec != self.spec or self._signature(flat) != self.signature:
            raise FastFreeError("a CUDA-graphed call changed its input shapes, dtypes or constants; the graph was "
                                "captured for fixed ones (run with --no-cuda-graphs to allow that)")
        with torch.no_grad():  # plain copies into the graph's inputs: no autograd history chained onto them
            for static, a in zip(self.static_in, flat):
                if isinstance(a, torch.Tensor):
                    static.copy_(a, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.static_out
