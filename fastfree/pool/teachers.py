"""Which classes and images each teacher of a pool is trained on (the authors' protocol).

Teacher i solves a `ways`-way task over classes drawn at random from the meta-train split
(classes may repeat across teachers); local label j is global class `classes[j]`. Per
class, the first (1 - heldout_fraction) of its images (in stored order) train the teacher,
the rest are held out to pick the best epoch.

A multi-architecture pool (the paper's Table 4) draws each teacher's architecture uniformly
at random from a list, as the paper and the authors' code do ("for each pre-trained model, the
architecture is randomly chosen from Conv4, ResNet-10 and ResNet-18"): independent draws, so the
group sizes vary around P / len(archs). The draws come from their own random stream, so the
classes and seeds of a pool do not depend on the architectures chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fastfree.data.split import ImageSplit
from fastfree.errors import FastFreeError


@dataclass(frozen=True)
class TeacherSpec:
    index: int
    classes: tuple[int, ...]
    seed: int  # initialisation and data-order seed of this teacher
    arch: str = "conv4"


@dataclass(frozen=True)
class TeacherData:
    """Indices into the split and task-local labels of one teacher's train / held-out images."""

    train_idx: torch.Tensor
    train_y: torch.Tensor
    heldout_idx: torch.Tensor
    heldout_y: torch.Tensor


def sample_teacher_specs(classes: list[int], num_teachers: int, ways: int, seed: int,
                         archs: tuple[str, ...] = ("conv4",)) -> list[TeacherSpec]:
    if len(classes) < ways:
        raise FastFreeError(
            f"teachers solve {ways}-way tasks but the meta-train split has only {len(classes)} classes: "
            f"lower --ways"
        )
    if num_teachers < 1:
        raise FastFreeError(f"a pool needs at least one teacher, got --teachers {num_teachers}")
    if not archs:
        raise FastFreeError("a pool needs at least one teacher architecture")
    rng = np.random.default_rng(seed)
    pool = np.array(sorted(classes))
    # a separate stream, untouched for one architecture: single-architecture pools stay as they were
    drawn = np.random.default_rng([seed, 1]).integers(0, len(archs), num_teachers) if len(archs) > 1 else \
        np.zeros(num_teachers, dtype=np.int64)
    specs = []
    for i in range(num_teachers):
        chosen = rng.choice(pool, size=ways, replace=False)
        specs.append(TeacherSpec(i, tuple(int(c) for c in chosen), int(rng.integers(0, 2**31 - 1)),
                                 archs[int(drawn[i])]))
    return specs


def teacher_data(split: ImageSplit, spec: TeacherSpec, heldout_fraction: float) -> TeacherData:
    index = split.class_index()
    train_idx, train_y, held_idx, held_y = [], [], [], []
    for local, c in enumerate(spec.classes):
        idx = index[c]
        n_train = int(math.floor(idx.numel() * (1 - heldout_fraction) + 1e-9))
        if n_train < 1 or n_train == idx.numel():
            raise FastFreeError(
                f"class {c} has {idx.numel()} images: too few to hold out {heldout_fraction:.0%} "
                f"and still train; use a data set with more images per class"
            )
        train_idx.append(idx[:n_train])
        held_idx.append(idx[n_train:])
        train_y.append(torch.full((n_train,), local, dtype=torch.long, device=idx.device))
        held_y.append(torch.full((idx.numel() - n_train,), local, dtype=torch.long, device=idx.device))
    return TeacherData(torch.cat(train_idx), torch.cat(train_y), torch.cat(held_idx), torch.cat(held_y))


def epoch_order(spec: TeacherSpec, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of a teacher's training images in one epoch (same in every engine)."""
    return np.random.default_rng([spec.seed, epoch]).permutation(n)
