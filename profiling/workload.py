"""A FREE workload to time and count: data, teachers, configuration, a steady-state start.

Shared by `fastfree profile run` and `fastfree bench`. The teachers come from a pool directory
when one is given; otherwise they are freshly initialised models of the preset's architecture
(time and FLOPs do not depend on the weights, so profiling needs no pretraining). The state
starts after the warm-up iterations, so every phase of Algorithm 3 runs from the first profiled
iteration, and the memory bank is pre-filled with random images (shots + queries per class of
every teacher) so that replay can form tasks at once, as it does in the steady state of a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastfree.config import Preset
from fastfree.data.split import FewShotDataset
from fastfree.free.config import FreeConfig
from fastfree.free.trainer import FreeState, PhaseTimer, ReferenceEngine, init_state
from fastfree.pool.pretrain import init_teacher
from fastfree.pool.fit import check_pool_fits
from fastfree.pool.store import load_pool
from fastfree.pool.teachers import sample_teacher_specs

PHASES = ("five", "generator", "bank", "alignment", "bell", "replay")


@dataclass
class Workload:
    preset: Preset
    cfg: FreeConfig
    dataset: FewShotDataset
    teachers: list[nn.Module]
    teacher_classes: list[tuple[int, ...]]
    teachers_source: str
    device: torch.device
    dtype: torch.dtype

    @property
    def ways(self) -> int:
        return len(self.teacher_classes[0])


def load_teachers(preset: Preset, dataset: FewShotDataset, pool_dir: str | None, device: torch.device,
                  dtype: torch.dtype) -> tuple[list[nn.Module], list[tuple[int, ...]], str]:
    """The pool's teachers, or freshly initialised ones of the preset's pool configuration."""
    if pool_dir:
        pool = load_pool(pool_dir)
        # the data set, image size and normalisation, as train checks them (the size was not checked here)
        check_pool_fits(pool, dataset, "this profile", "pass a matching --data or --pool",
                        "pass --image-size {size} (the pool's)")
        models = [m.to(dtype).eval().requires_grad_(False) for m in pool.models(device)]
        return models, [r.classes for r in pool.records], f"pool {pool.path} ({len(models)} teachers)"
    cfg = preset.pretrain
    specs = sample_teacher_specs(dataset.train.classes, cfg.teachers, cfg.ways, cfg.seed, cfg.archs)
    models = [init_teacher(s, cfg, dataset.image_size).to(device=device, dtype=dtype).eval().requires_grad_(False)
              for s in specs]
    archs = "/".join(sorted({type(m).__name__ for m in models}))
    return models, [s.classes for s in specs], (f"{len(models)} freshly initialised {archs} teachers (no --pool: "
                                                "time and FLOPs do not depend on the weights)")


def fresh_state(w: Workload) -> FreeState:
    """A new run's state at the first post-warm-up iteration, its bank pre-filled (see the module doc)."""
    state = init_state(w.cfg, w.dataset.image_size, w.ways, w.device, w.dtype)
    state.iteration = w.cfg.warmup
    classes = sorted({c for cls in w.teacher_classes for c in cls})
    per_class = min(w.cfg.replay.shots + w.cfg.replay.queries, w.cfg.memory_per_class)
    g = torch.Generator().manual_seed(w.cfg.seed)
    size = w.dataset.image_size
    images = torch.rand(len(classes) * per_class, 3, size, size, generator=g, dtype=w.dtype)
    labels = torch.tensor(classes).repeat(per_class)
    state.bank.add(images.to(w.device), labels.to(w.device))
    return state


def make_engine(w: Workload, options):
    """ReferenceEngine when options is None, else the fast engine with these options."""
    if options is None:
        return ReferenceEngine(w.teachers)
    from fastfree.engine.trainer import FastEngine

    return FastEngine(w.teachers, options, w.device)


class CountingTimer(PhaseTimer):
    """A PhaseTimer that also splits an active FlopCounterMode's running total by phase."""

    def __init__(self, device: torch.device, counter):
        super().__init__(device)
        self.counter = counter
        self.totals: list[tuple[str, int]] = []

    def mark(self, name: str) -> None:
        super().mark(name)
        self.totals.append((name, self.counter.get_total_flops()))

    def flops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, a), (name, b) in zip(self.totals, self.totals[1:]):
            out[name] = out.get(name, 0) + b - a
        return out
