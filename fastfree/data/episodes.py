"""Episodic N-way K-shot Q-query task sampling.

Task t of a sampler with seed s is drawn from its own generator seeded by (s, t): the same
seed gives the same tasks whatever the chunking, and two methods evaluated with the same
seed see the same tasks. Indices are drawn on the host (cheap), images are gathered and
normalised on the images' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastfree.data.split import ImageSplit, Normalization
from fastfree.errors import FastFreeError


@dataclass(frozen=True)
class EpisodeSpec:
    ways: int = 5
    shots: int = 1
    queries: int = 15

    def __post_init__(self) -> None:
        if self.ways < 2 or self.shots < 1 or self.queries < 1:
            raise FastFreeError(
                f"an episode needs ways >= 2, shots >= 1, queries >= 1; got {self.ways}-way "
                f"{self.shots}-shot {self.queries}-query"
            )


@dataclass(frozen=True)
class EpisodeBatch:
    """T tasks. Support/query images are normalised float [T, ways*shots|ways*queries, 3, H, W],
    labels are task-local 0..ways-1 (class-major order), classes are the global ids [T, ways]."""

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return int(self.support.shape[0])

    def task(self, i: int) -> "EpisodeBatch":
        """Task i as a batch of one (keeps the leading dimension)."""
        return EpisodeBatch(*(t[i : i + 1] for t in (self.support, self.support_labels, self.query,
                                                     self.query_labels, self.classes)))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images [..., 3, H, W] -> [..., 3, size, size]: bilinear, no antialiasing (F.interpolate's
    default, as the teachers of a multi-domain run see generated images). Normalising commutes with
    it (a per-channel affine map; bilinear weights sum to 1), so the order of the two does not matter."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    lead = images.shape[:-3]
    out = F.interpolate(images.reshape(-1, *images.shape[-3:]), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=False)
    return out.reshape(*lead, *out.shape[-3:])


class EpisodeSampler:
    """Tasks of one split. ``image_size``: resize every image to it (a multi-domain run's meta-learner
    size); None keeps the split's own size."""

    def __init__(self, split: ImageSplit, normalization: Normalization, spec: EpisodeSpec, seed: int = 0,
                 image_size: int | None = None):
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise FastFreeError(f"task seed must be an integer >= 0 (numpy seeds each task from it), got {seed!r}")
        index = split.class_index()
        if len(index) < spec.ways:
            raise FastFreeError(
                f"{split.name} has {len(index)} classes, fewer than the {spec.ways} ways asked for: "
                f"lower --ways or use a split with more classes"
            )
        need = spec.shots + spec.queries
        small = {c: n.numel() for c, n in index.items() if n.numel() < need}
        if small:
            raise FastFreeError(
                f"{split.name}: {len(small)} classes have fewer than shots + queries = {need} images "
                f"(e.g. class {next(iter(small))} has {next(iter(small.values()))}); lower --shots/--queries"
            )
        self.split = split
        self.normalization = normalization
        self.spec = spec
        self.seed = seed
        self.image_size = image_size
        self._classes = np.array(sorted(index), dtype=np.int64)
        self._index_cpu = {c: idx.cpu().numpy() for c, idx in index.items()}

    def task_indices(self, task: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(global classes [ways], support image indices [ways*shots], query indices [ways*queries])."""
        spec = self.spec
        rng = np.random.default_rng([self.seed, task])
        classes = rng.choice(self._classes, size=spec.ways, replace=False)
        support, query = [], []
        for c in classes:
            pick = rng.choice(self._index_cpu[int(c)], size=spec.shots + spec.queries, replace=False)
            support.append(pick[: spec.shots])
            query.append(pick[spec.shots :])
        return classes, np.concatenate(support), np.concatenate(query)

    def batch(self, tasks: range | list[int], dtype: torch.dtype = torch.float32) -> EpisodeBatch:
        spec = self.spec
        parts = [self.task_indices(t) for t in tasks]
        device = self.split.device
        classes = torch.as_tensor(np.stack([p[0] for p in parts]), device=device)
        s_idx = torch.as_tensor(np.stack([p[1] for p in parts]), device=device)
        q_idx = torch.as_tensor(np.stack([p[2] for p in parts]), device=device)
        n = len(parts)
        local = torch.arange(spec.ways, device=device)
        support = self.normalization(self.split.images[s_idx], dtype)
        query = self.normalization(self.split.images[q_idx], dtype)
        if self.image_size is not None:
            support, query = resize(support, self.image_size), resize(query, self.image_size)
        return EpisodeBatch(
            support=support,
            support_labels=local.repeat_interleave(spec.shots).expand(n, -1).contiguous(),
            query=query,
            query_labels=local.repeat_interleave(spec.queries).expand(n, -1).contiguous(),
            classes=classes,
        )
