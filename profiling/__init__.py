"""Benchmarks and the profiling harness (installed as `fastfree.profiling`).

- `python -m fastfree.profiling.bench_pool`: batched (vmap) vs one-by-one teacher-pool
  pretraining, side by side in one run on one device.
"""
