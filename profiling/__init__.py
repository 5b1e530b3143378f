"""Benchmarks and the profiling harness (installed as `fastfree.profiling`).

- `python -m fastfree.profiling.bench_pool`: batched (vmap) vs one-by-one teacher-pool
  pretraining, side by side in one run on one device.
- `flops.py`: thop's per-layer counting rules (re-implemented) and FlopCounterMode counts of
  one image; `table1.py`: the paper's Table 1 recounted (`fastfree profile table1`).
"""
