"""Run the Triton kernels on CPU through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is imported (`triton.jit` decides at decoration
time); `fastfree.kernels` reads it once at import. This conftest is loaded at collection,
before any test runs, and nothing else in the suite imports triton at collection time.
With a GPU the variable is left alone, so the GPU tests run the compiled kernels.
Other tests are unaffected: they do not use triton (the CPU inductor backend generates C++).
"""

import os
import sys

import torch

TRITON_IMPORTED_EARLY = "triton" in sys.modules
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
