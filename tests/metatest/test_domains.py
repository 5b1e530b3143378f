"""Meta-testing spread evenly over several domains, reported per domain and overall."""

import numpy as np
import pytest
import torch

from fastfree.data.domains import combine_domains
from fastfree.data.episodes import EpisodeSampler, EpisodeSpec
from fastfree.data.split import CIFAR100_NORM, IMAGENET_NORM, FewShotDataset
from fastfree.errors import FastFreeError
from fastfree.metatest.domains import run_metatest_domains, tasks_per_domain
from fastfree.metatest.initializations import random_init
from fastfree.metatest.protocol import MetaTestConfig, run_metatest
from fastfree.models import Conv4
from tests.conftest import make_split


def _domain(name, size, norm, seed):
    return FewShotDataset(name, make_split(f"{name}/train", range(0, 5), 4, size, seed),
                          make_split(f"{name}/val", range(5, 10), 4, size, seed + 1),
                          make_split(f"{name}/test", range(10, 16), 6, size, seed + 2), norm)


def test_tasks_are_spread_evenly():
    assert tasks_per_domain(1800, 3) == [600, 600, 600]
    assert tasks_per_domain(7, 3) == [3, 2, 2]
    with pytest.raises(FastFreeError, match="at least 3"):
        tasks_per_domain(2, 3)


def test_sampler_resizes_to_the_learners_size():
    split = make_split("s", range(6), 4, 16)
    plain = EpisodeSampler(split, IMAGENET_NORM, EpisodeSpec(5, 1, 2), seed=3).batch(range(2))
    big = EpisodeSampler(split, IMAGENET_NORM, EpisodeSpec(5, 1, 2), seed=3, image_size=24).batch(range(2))
    assert big.support.shape == (2, 5, 3, 24, 24) and torch.equal(big.classes, plain.classes)
    want = torch.nn.functional.interpolate(plain.query[0], size=(24, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(big.query[0], want)


def test_per_domain_accounting_and_the_pooled_interval():
    data = combine_domains([_domain("a", 32, CIFAR100_NORM, 0), _domain("b", 16, IMAGENET_NORM, 10)])
    cfg = MetaTestConfig(tasks=5, shots=(1, 2), queries=2, steps=1, engine="reference")
    init = random_init(lambda: Conv4(5, 4, 32), 0)
    out = run_metatest_domains(init, data, "test", cfg)
    assert list(out.per_domain) == ["a", "b"]
    assert [r.tasks for r in out.per_domain["a"]] == [3, 3] and [r.tasks for r in out.per_domain["b"]] == [2, 2]
    for i, overall in enumerate(out.overall):
        acc = out.per_domain["a"][i].accuracies + out.per_domain["b"][i].accuracies
        assert overall.tasks == 5 and overall.mean == pytest.approx(np.mean(acc))
        assert overall.ci95 == pytest.approx(1.96 * np.std(acc) / np.sqrt(5))
    # domain a's share is that domain's own meta-test, its first tasks, at the learner's size (32 px)
    alone = run_metatest(init, data.domains[0].test, data.normalization, MetaTestConfig(
        tasks=3, shots=(1, 2), queries=2, steps=1, engine="reference"))
    assert [r.accuracies for r in alone] == [r.accuracies for r in out.per_domain["a"]]
