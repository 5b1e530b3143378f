"""Meta-testing over several domains (Table 3: "we evenly construct 1800 meta-testing tasks across
all meta-testing sets"): N tasks = N/D per domain, each task drawn from one domain's split, its
images resized to the meta-learner's size and normalised with the meta-learner's normalisation
(the input space it was trained in). Reported per domain and overall (mean +- 95% interval over
all N tasks)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from fastfree.data.domains import MultiDomainData
from fastfree.data.split import FewShotDataset
from fastfree.errors import FastFreeError
from fastfree.metatest.initializations import Initialization
from fastfree.metatest.protocol import MetaTestConfig, ShotResult, confidence_interval, run_metatest


@dataclass(frozen=True)
class DomainResults:
    overall: list[ShotResult]  # one per shot count, over the tasks of every domain
    per_domain: dict[str, list[ShotResult]]


def tasks_per_domain(total: int, domains: int) -> list[int]:
    """`total` tasks spread evenly; the first `total % domains` domains get one more."""
    if total < domains:
        raise FastFreeError(f"{total} meta-test tasks cannot cover {domains} domains: ask for at least {domains} "
                            f"(--test-tasks / --val-tasks), best a multiple of {domains}")
    return [total // domains + (i < total % domains) for i in range(domains)]


def pooled(shots: int, parts: list[ShotResult]) -> ShotResult:
    acc = np.array([a for p in parts for a in p.accuracies])
    mean, ci = confidence_interval(acc)
    return ShotResult(shots, mean, ci, len(acc), acc.tolist())


def run_metatest_domains(init: Initialization, data: MultiDomainData, split: str, config: MetaTestConfig,
                         dtype: torch.dtype = torch.float32, progress=None) -> DomainResults:
    """config.tasks tasks per shot count, spread over the domains; the same seed gives the same tasks.
    `progress(n)`: as in run_metatest."""
    counts = tasks_per_domain(config.tasks, len(data.domains))
    per_domain = {
        label: run_metatest(init, dataset.split(split), data.normalization, replace(config, tasks=n), dtype,
                            progress=progress, image_size=data.image_size)
        for label, dataset, n in zip(data.labels, data.domains, counts)
    }
    overall = [pooled(s, [r[i] for r in per_domain.values()]) for i, s in enumerate(config.shots)]
    return DomainResults(overall, per_domain)


def metatest_data(init: Initialization, data: FewShotDataset | MultiDomainData, split: str, config: MetaTestConfig,
                  dtype: torch.dtype = torch.float32, progress=None
                  ) -> tuple[list[ShotResult], dict[str, list[ShotResult]] | None]:
    """Meta-test on one split of a run's data: (results, None) for one data set; for several domains
    the results over all tasks (spread evenly over the domains) and each domain's."""
    if isinstance(data, MultiDomainData):
        out = run_metatest_domains(init, data, split, config, dtype, progress)
        return out.overall, out.per_domain
    return run_metatest(init, data.split(split), data.normalization, config, dtype, progress=progress), None
