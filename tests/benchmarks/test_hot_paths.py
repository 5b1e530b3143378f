"""Timings of the hot paths on small CPU shapes, against the committed baseline (see conftest.py)."""

from __future__ import annotations

import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.engine.replay import maml_meta_batch_fast
from fastfree.free.replay import maml_meta_batch_reference
from fastfree.kernels.reference import inversion_rows, kl_rows
from fastfree.metatest.adapt import adapted_query_logits_batched, adapted_query_logits_reference
from tests.benchmarks.workloads import FiveWorkload, replay_batch


def test_five_epoch_reference(regression):
    w = FiveWorkload()
    tasks, grad = regression(w.reference)
    assert all(torch.isfinite(g).all() for g in grad.values())


def test_five_epoch_fast(regression):
    w = FiveWorkload()
    out = regression(w.fast_epoch)
    assert torch.isfinite(out.loss).all()


def test_replay_meta_batch_reference(regression):
    learner, batch, cfg = replay_batch()
    grads, loss = regression(lambda: maml_meta_batch_reference(learner, batch, CIFAR100_NORM, cfg)[:2])
    assert torch.isfinite(loss)


def test_replay_meta_batch_vmapped(regression):
    learner, batch, cfg = replay_batch()
    grads, loss = regression(lambda: maml_meta_batch_fast(learner, batch, CIFAR100_NORM, cfg)[:2])
    assert torch.isfinite(loss)


def test_inversion_and_distillation_losses_torch(regression):
    """The losses' torch path (what the kernels replace), forward + backward at the engine's shape."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 100, 5, generator=g, requires_grad=True)
    student = torch.randn(4, 100, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (4, 100), generator=g)

    def step():
        rows = inversion_rows(teacher, student.detach(), labels, True, False)[0]
        kl = kl_rows(teacher.detach(), student, False)[0]
        (rows.sum() + kl.sum()).backward()
        return rows

    assert torch.isfinite(regression(step, rounds=20)).all()


def test_metatest_adaptation(regression):
    from fastfree.data.episodes import EpisodeSampler, EpisodeSpec
    from fastfree.data.procedural import build_procedural
    from fastfree.metatest.initializations import random_init
    from fastfree.models import build_model
    from functools import partial

    data = build_procedural(seed=0, images_per_class=20, image_size=16)
    init = random_init(partial(build_model, "conv4", 5, 8, 16), seed=0)
    batch = EpisodeSampler(data.test, data.normalization, EpisodeSpec(5, 1, 3), 0).batch(range(4), torch.float32)
    params = init.for_tasks(range(4), torch.device("cpu"), torch.float32)
    logits = regression(lambda: adapted_query_logits_reference(init.template, params, batch, 3, 0.01))
    assert torch.equal(logits.argmax(-1), adapted_query_logits_batched(init.template, params, batch, 3,
                                                                        0.01).argmax(-1))
