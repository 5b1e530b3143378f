"""The meta-test protocol: many N-way K-shot tasks, adapt, predict, mean +- 95% interval."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from fastfree.data.episodes import EpisodeSampler, EpisodeSpec
from fastfree.data.split import ImageSplit, Normalization
from fastfree.device import ENGINES, resolve_metatest_engine
from fastfree.errors import FastFreeError
from fastfree.metatest.adapt import (
    adapted_query_logits_batched,
    adapted_query_logits_reference,
    adapted_query_logits_threaded,
    query_accuracy,
)
from fastfree.metatest.initializations import Initialization


@dataclass(frozen=True)
class MetaTestConfig:
    tasks: int = 600
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    steps: int = 10
    lr: float = 0.01
    chunk: int = 50  # tasks adapted together (vmap); bounds memory
    seed: int = 0
    engine: str = "auto"  # batched (vmap over tasks), reference (one task at a time), threads (tasks side by
    # side in threads, one torch thread each), auto (batched on CUDA; threads on a CPU with >1 thread, else reference)

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.chunk < 1 or self.steps < 0 or not 0 < self.lr < math.inf:
            raise FastFreeError(
                f"meta-test needs tasks >= 1, chunk >= 1, steps >= 0 and a finite lr > 0; got tasks={self.tasks}, "
                f"chunk={self.chunk}, steps={self.steps}, lr={self.lr}"
            )
        if not self.shots or min(self.shots) < 1:
            raise FastFreeError(f"shots must be a non-empty list of positive ints, got {self.shots}")
        if self.engine not in ENGINES:
            raise FastFreeError(
                f"unknown meta-test engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        EpisodeSpec(self.ways, min(self.shots), self.queries)  # validates ways/queries


def task_protocol(config: MetaTestConfig) -> dict:
    """What decides which tasks a meta-test draws and how each is scored, as JSON (pure): two
    meta-tests of the same data with equal protocols meet the same tasks. The engine and chunk
    size are left out: they change how tasks are batched, not which tasks or their result."""
    return {"tasks": config.tasks, "ways": config.ways, "shots": list(config.shots), "queries": config.queries,
            "steps": config.steps, "lr": config.lr, "seed": config.seed}


@dataclass(frozen=True)
class ShotResult:
    shots: int
    mean: float  # accuracy in percent
    ci95: float  # 1.96 * std / sqrt(n), in percent
    tasks: int
    accuracies: list[float] = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("accuracies")
        return d


def confidence_interval(acc: np.ndarray) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (population std, as the few-shot literature computes it)."""
    return float(acc.mean()), float(1.96 * acc.std() / math.sqrt(len(acc)))


def run_metatest(
    init: Initialization | Mapping[int, Initialization],
    split: ImageSplit,
    normalization: Normalization,
    config: MetaTestConfig,
    dtype: torch.dtype = torch.float32,
    progress=None,
    image_size: int | None = None,
) -> list[ShotResult]:
    """Evaluate one initialisation on `config.tasks` tasks per shot count.

    `init` may differ per shot count ({shots: init}: a run's learners selected per shot count on
    meta-val). `progress(n)` is called with the number of tasks finished in each chunk.
    `image_size`: resize the split's images to it (a multi-domain run's meta-learner size; None:
    the split's own).
    """
    device = split.device
    adapt = {"batched": adapted_query_logits_batched, "reference": adapted_query_logits_reference,
             "threads": adapted_query_logits_threaded}[resolve_metatest_engine(config.engine, device)]
    results = []
    for shots in config.shots:
        start_from = init[shots] if isinstance(init, Mapping) else init
        head = [p for n, p in start_from.template.named_parameters()][-1]
        if head.shape[0] != config.ways:
            raise FastFreeError(
                f"the model has {head.shape[0]} outputs but the meta-test is {config.ways}-way: "
                f"use --ways {head.shape[0]} or a model with {config.ways} outputs"
            )
        template = start_from.template.to(device=device, dtype=dtype)
        sampler = EpisodeSampler(split, normalization, EpisodeSpec(config.ways, shots, config.queries), config.seed,
                                 image_size)
        accs = []
        for start in range(0, config.tasks, config.chunk):
            tasks = range(start, min(start + config.chunk, config.tasks))
            batch = sampler.batch(tasks, dtype)
            params = start_from.for_tasks(tasks, device, dtype)
            logits = adapt(template, params, batch, config.steps, config.lr)
            accs.append(query_accuracy(logits, batch.query_labels))
            if progress is not None:
                progress(len(tasks))
        acc = torch.cat(accs).double().cpu().numpy() * 100.0
        mean, ci = confidence_interval(acc)
        results.append(ShotResult(shots, mean, ci, len(acc), acc.tolist()))
    return results
