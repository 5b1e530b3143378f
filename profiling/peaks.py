"""Peak dense FLOP/s of known devices, per precision: the denominator of MFU.

From NVIDIA's data sheets, dense (no structured sparsity), TFLOP/s. The precision key is the
one the run actually computes in: "bf16" under --amp, "tf32" for float32 convolutions on CUDA
when cuDNN may use TF32 (PyTorch's default; the linear heads' matmuls, a small share of the
FLOPs, stay fp32 unless torch.backends.cuda.matmul.allow_tf32 is set), "fp32"
otherwise, "fp64" for float64 (the non-tensor-core figure: cuDNN convolutions in float64 do not
use tensor cores). Devices are matched by a key in their name as whole words ("A100" is not
"A1000"), most specific first; a variant whose figures this table does not hold has an empty
row, so it gets no peak (MFU not computed; --peak-tflops gives one) rather than a sibling's.
"""

from __future__ import annotations

import re

import torch

# (substring of torch.cuda.get_device_name(), {precision: dense TFLOP/s})
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0, "fp64": 30.0}),
    ("H100 PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2, "fp64": 25.6}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9, "fp64": 33.5}),  # SXM ("H100 80GB HBM3")
    ("H200 NVL", {}),  # not the SXM part's figures
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9, "fp64": 33.5}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 9.7}),
    ("L40S", {"bf16": 362.05, "tf32": 183.0, "fp32": 91.6, "fp64": 1.4}),
    ("RTX 3090 Ti", {}),  # not the 3090's figures
    ("RTX 3090", {"bf16": 71.0, "tf32": 35.6, "fp32": 35.6, "fp64": 0.56}),  # the paper's GPU
]


def precision_key(device: torch.device, dtype: torch.dtype, amp: bool) -> str:
    """The precision the convolutions and matmuls run in."""
    if amp:
        return "bf16"
    if dtype == torch.float64:
        return "fp64"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The device's dense peak for `precision`, or None when the device is not in the table (CPUs)."""
    for key, peaks in PEAK_TFLOPS:
        if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", device_name, re.IGNORECASE):
            return peaks.get(precision)
    return None
