"""The MFU denominator: the device's peak for the precision actually used."""

import torch

from fastfree.profiling.peaks import peak_tflops, precision_key


def test_peaks_by_device_name_most_specific_first():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.5
    assert peak_tflops("NVIDIA H100 NVL", "tf32") == 417.5
    assert peak_tflops("NVIDIA H200", "fp32") == 66.9
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == 156.0


def test_unknown_devices_have_no_peak():
    assert peak_tflops("cpu (x86_64)", "fp32") is None
    # names that contain a known one without being it: no sibling's figures (MFU off by 16 % or worse)
    for name in ("NVIDIA RTX A1000 Laptop GPU", "NVIDIA H200 NVL", "NVIDIA GeForce RTX 3090 Ti"):
        assert peak_tflops(name, "bf16") is None, name
    assert peak_tflops("NVIDIA GeForce RTX 3090", "tf32") == 35.6


def test_precision_follows_amp_dtype_and_tf32():
    cpu = torch.device("cpu")
    assert precision_key(cpu, torch.float32, amp=True) == "bf16"
    assert precision_key(cpu, torch.float64, amp=False) == "fp64"
    assert precision_key(cpu, torch.float32, amp=False) == "fp32"
    allowed = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert precision_key(torch.device("cuda"), torch.float32, amp=False) == "tf32"
        torch.backends.cudnn.allow_tf32 = False
        assert precision_key(torch.device("cuda"), torch.float32, amp=False) == "fp32"
    finally:
        torch.backends.cudnn.allow_tf32 = allowed
