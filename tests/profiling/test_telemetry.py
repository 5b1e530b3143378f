"""NVML telemetry: absent without a GPU (never an error), and the sampler's arithmetic on a fake NVML."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from fastfree.profiling.telemetry import Telemetry


class FakeNvml:
    """pynvml's calls that Telemetry uses: 40% busy, 2 GiB used, 100 W, an energy counter in mJ."""

    def __init__(self, energy: bool = True, fail_init: bool = False):
        self.energy, self.fail_init, self.t0 = energy, fail_init, time.perf_counter()
        self.shutdown = False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=40, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=2 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        return 100_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy:
            raise RuntimeError("Not Supported")
        return int((time.perf_counter() - self.t0) * 100_000)  # 100 W in mJ


def test_a_cpu_device_has_no_telemetry_and_says_why():
    with Telemetry(torch.device("cpu")) as t:
        pass
    s = t.summary(iterations=3)
    assert s == {"available": False, "reason": "no NVML telemetry on a cpu device"}


def test_a_missing_nvml_library_is_reported_not_raised():
    with Telemetry(torch.device("cuda"), nvml=FakeNvml(fail_init=True), handle=0) as t:
        pass
    s = t.summary(3)
    assert not s["available"] and "NVML Shared Library Not Found" in s["reason"]


def test_samples_and_energy_from_the_driver_counter():
    fake = FakeNvml()
    with Telemetry(torch.device("cuda"), interval_s=0.01, nvml=fake, handle=0) as t:
        time.sleep(0.2)
    s = t.summary(iterations=4)
    assert s["available"] and s["samples"] >= 5 and fake.shutdown
    assert s["utilization_mean_pct"] == 40 and s["memory_used_max_mib"] == 2048 and s["power_mean_w"] == 100
    assert s["energy_source"] == "driver energy counter"
    assert 100 * 0.15 < s["energy_j"] < 100 * 0.5  # 100 W for ~0.2 s
    assert s["energy_per_iteration_j"] == s["energy_j"] / 4


def test_energy_is_integrated_from_power_without_a_counter():
    with Telemetry(torch.device("cuda"), interval_s=0.01, nvml=FakeNvml(energy=False), handle=0) as t:
        time.sleep(0.2)
    s = t.summary(iterations=1)
    assert s["energy_source"] == "integrated sampled power"
    assert 100 * 0.1 < s["energy_j"] < 100 * 0.5
