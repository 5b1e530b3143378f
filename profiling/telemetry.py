"""NVML telemetry sampled in a background thread: utilisation, memory, power, energy.

Absent NVML (no GPU, no driver, a CPU run) is a normal case, not an error: the result then
says `available: false` and why. Energy comes from the driver's cumulative counter
(nvmlDeviceGetTotalEnergyConsumption, Volta and later) when it exists, else from integrating
the sampled power over time.
"""

from __future__ import annotations

import threading
import time
from types import ModuleType

import torch


def _nvml() -> ModuleType:
    import pynvml  # the nvidia-ml-py distribution

    return pynvml


def _handle(nvml: ModuleType, device: torch.device):
    """The NVML handle of a CUDA device, by PCI bus id (CUDA and NVML may number devices differently)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    try:
        bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        return nvml.nvmlDeviceGetHandleByPciBusId(bus)
    except Exception:  # older torch without the PCI fields, or a bus-id format NVML rejects
        return nvml.nvmlDeviceGetHandleByIndex(index)


class Telemetry:
    """`with Telemetry(device) as t: ...` then `t.summary(iterations)`."""

    def __init__(self, device: torch.device, interval_s: float = 0.05, nvml: ModuleType | None = None,
                 handle=None):
        """`nvml` and `handle` replace pynvml and the device's NVML handle (tests pass fakes)."""
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float, float]] = []  # (t, util %, memory MiB, power W)
        self.reason: str | None = None
        self.energy_mj: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = self._h = None
        if device.type != "cuda":
            self.reason = f"no NVML telemetry on a {device.type} device"
            return
        try:
            self._nvml = nvml or _nvml()
            self._nvml.nvmlInit()
            self._h = handle if handle is not None else _handle(self._nvml, device)
        except Exception as e:  # no driver, no library, permission: telemetry is optional
            self.reason = f"NVML unavailable: {e}"
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def _energy(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._h))
        except Exception:  # pre-Volta or not permitted
            return None

    def _sample(self) -> None:
        nvml, h = self._nvml, self._h
        while not self._stop.is_set():
            try:
                util = nvml.nvmlDeviceGetUtilizationRates(h).gpu
                mem = nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
                power = nvml.nvmlDeviceGetPowerUsage(h) / 1000
                self.samples.append((time.perf_counter(), float(util), float(mem), float(power)))
            except Exception as e:
                self.reason = f"NVML sampling stopped: {e}"
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "Telemetry":
        if self.available:
            self._energy_start = self._energy()
            self._thread = threading.Thread(target=self._sample, name="nvml-telemetry", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            end = self._energy()
            if self._energy_start is not None and end is not None:
                self.energy_mj = (self._energy_start, end)
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def summary(self, iterations: int) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        out: dict = {"available": True, "samples": len(self.samples), "interval_s": self.interval_s}
        if self.samples:
            util = [s[1] for s in self.samples]
            out |= {
                "utilization_mean_pct": sum(util) / len(util), "utilization_max_pct": max(util),
                "memory_used_max_mib": max(s[2] for s in self.samples),
                "power_mean_w": sum(s[3] for s in self.samples) / len(self.samples),
            }
        if self.energy_mj is not None:
            joules, source = (self.energy_mj[1] - self.energy_mj[0]) / 1000, "driver energy counter"
        elif len(self.samples) > 1:
            joules = sum((b[0] - a[0]) * (a[3] + b[3]) / 2 for a, b in zip(self.samples, self.samples[1:]))
            source = "integrated sampled power"
        else:
            joules, source = None, "too few samples"
        out |= {"energy_j": joules, "energy_per_iteration_j": joules / iterations if joules is not None else None,
                "energy_source": source}
        if self.reason:
            out["note"] = self.reason
        return out
