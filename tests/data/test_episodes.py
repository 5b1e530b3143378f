import numpy as np
import pytest
import torch

from fastfree.data.episodes import EpisodeSampler, EpisodeSpec
from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError


def test_episode_shapes_labels_and_classes(tiny_split):
    sampler = EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(5, 2, 3), seed=0)
    batch = sampler.batch(range(4))
    assert batch.support.shape == (4, 10, 3, 32, 32) and batch.support.dtype == torch.float32
    assert batch.query.shape == (4, 15, 3, 32, 32)
    assert batch.support_labels[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.query_labels[0].tolist() == sum(([c] * 3 for c in range(5)), [])
    for t in range(4):  # every image belongs to the class its local label names
        classes, s_idx, q_idx = sampler.task_indices(t)
        assert len(set(classes.tolist())) == 5
        assert set(s_idx.tolist()).isdisjoint(q_idx.tolist())
        labels = tiny_split.labels
        assert (labels[torch.as_tensor(s_idx)] == torch.as_tensor(classes).repeat_interleave(2)).all()
        assert (labels[torch.as_tensor(q_idx)] == torch.as_tensor(classes).repeat_interleave(3)).all()


def test_images_are_normalised_on_the_fly(tiny_split):
    sampler = EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(5, 1, 1), seed=0)
    _, s_idx, _ = sampler.task_indices(0)
    expected = CIFAR100_NORM(tiny_split.images[torch.as_tensor(s_idx)])
    torch.testing.assert_close(sampler.batch([0]).support[0], expected)
    assert tiny_split.images.dtype == torch.uint8  # stored images stay uint8


def test_same_seed_same_tasks_regardless_of_chunking(tiny_split):
    spec = EpisodeSpec(5, 1, 2)
    a = EpisodeSampler(tiny_split, CIFAR100_NORM, spec, seed=7).batch(range(6))
    b = EpisodeSampler(tiny_split, CIFAR100_NORM, spec, seed=7)
    parts = [b.batch(range(0, 4)), b.batch(range(4, 6))]
    assert torch.equal(a.support, torch.cat([p.support for p in parts]))
    assert torch.equal(a.classes, torch.cat([p.classes for p in parts]))
    c = EpisodeSampler(tiny_split, CIFAR100_NORM, spec, seed=8).batch(range(6))
    assert not torch.equal(a.classes, c.classes)


def test_tasks_cover_classes_uniformly(tiny_split):
    sampler = EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(5, 1, 1), seed=0)
    counts = np.bincount(np.concatenate([sampler.task_indices(t)[0] for t in range(400)]), minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # 200 expected per class


def test_bad_episode_specs(tiny_split):
    with pytest.raises(FastFreeError, match="fewer than the 11 ways"):
        EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(11, 1, 1))
    with pytest.raises(FastFreeError, match="shots \\+ queries = 11"):
        EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(5, 1, 10))
    with pytest.raises(FastFreeError, match="ways >= 2"):
        EpisodeSpec(1, 1, 1)
    for seed in (-1, 1.5):  # numpy refused a negative seed with a bare ValueError at the first task
        with pytest.raises(FastFreeError, match="task seed must be an integer >= 0"):
            EpisodeSampler(tiny_split, CIFAR100_NORM, EpisodeSpec(5, 1, 1), seed)
