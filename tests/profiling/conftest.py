"""A tiny pretrained pool on the built-in data, for the tools that read a pool's teachers."""

from __future__ import annotations

import pytest

from fastfree.data.procedural import build_procedural
from fastfree.pool.pretrain import PretrainConfig, pretrain_pool
from fastfree.pool.store import records_from_training, save_pool
from fastfree.pool.teachers import sample_teacher_specs

TINY_POOL = PretrainConfig(teachers=2, width=4, epochs=1, batch_size=50)


def write_tiny_pool(path, teachers: int = TINY_POOL.teachers, dataset_name: str | None = None):
    """`teachers` Conv4s of width 4, one epoch on the built-in data (20 images per class), saved at
    `path` under `dataset_name` (default: the data's own name). Returns the data set."""
    data = build_procedural(seed=0, images_per_class=20)
    specs = sample_teacher_specs(data.train.classes, teachers, TINY_POOL.ways, seed=0)
    trained = pretrain_pool(data.train, data.normalization, specs, TINY_POOL, "reference")
    save_pool(path, records_from_training(trained, TINY_POOL, data.train.image_size),
              [t.state_dict for t in trained], dataset_name or data.name, data.normalization, TINY_POOL.to_dict())
    return data


@pytest.fixture
def tiny_pool(tmp_path):
    """(the built-in data set, the path of a two-teacher pool trained on it)."""
    return write_tiny_pool(tmp_path / "pool"), tmp_path / "pool"


@pytest.fixture
def make_tiny_pool():
    """write_tiny_pool, for a test that needs another teacher count or data set name."""
    return write_tiny_pool
