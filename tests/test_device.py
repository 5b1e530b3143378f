"""--device (a CUDA device is made current: graphs, Triton launches and timer events use the current one)
and the engines' auto choice by device and threads."""

import pytest
import torch

from fastfree.device import resolve_device, resolve_metatest_engine, resolve_pool_engine
from fastfree.errors import FastFreeError


@pytest.fixture
def two_gpus(monkeypatch):
    """A stand-in for a machine with two GPUs: records which device is made current."""
    current = [0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.__setitem__(0, torch.device(d).index))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    return current


def test_cuda_n_becomes_the_current_device(two_gpus):
    """cuda:1 was returned as given and never made current: its CUDA graphs captured nothing (replays
    returned the capture's outputs), its Triton kernels refused their pointers, its timings read ~0."""
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and two_gpus == [1]
    assert resolve_device("cuda") == torch.device("cuda", 1)  # plain cuda: the current one, with its index
    assert resolve_device("cuda:0") == torch.device("cuda", 0) and two_gpus == [0]
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_a_gpu_that_is_not_there_is_refused(two_gpus):
    with pytest.raises(FastFreeError, match=r"--device cuda:2: torch sees 2 GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_cpu_and_bad_names():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(FastFreeError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device("cpu:3") == torch.device("cpu")
    for other in ("mps", "xpu", "meta"):  # parsed by torch, crashed later (after the data loaded)
        with pytest.raises(FastFreeError, match=f"--device {other}: fastfree runs on cpu or cuda"):
            resolve_device(other)
    if not torch.cuda.is_available():
        with pytest.raises(FastFreeError, match="sees no GPU"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("resolve, what", [(resolve_metatest_engine, "meta-test"), (resolve_pool_engine, "pretraining")])
def test_the_engine_by_device_and_threads(resolve, what, monkeypatch):
    """auto: vmapped on CUDA; on a CPU whole tasks/teachers side by side in threads where torch has more
    than one thread, else one at a time."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert resolve("auto", cpu) == "threads" and resolve("auto", cuda) == "batched"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert resolve("auto", cpu) == "reference"
    assert [resolve(e, cpu) for e in ("batched", "reference", "threads")] == ["batched", "reference", "threads"]
    with pytest.raises(FastFreeError, match=f"unknown {what} engine 'turbo'"):
        resolve("turbo", cpu)
