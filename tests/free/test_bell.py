"""BELL's outer update against Algorithm 2, by hand."""

import copy

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.free.bell import BellConfig, bell_reference, gradient_alignment
from fastfree.free.five import RecoveredTask, task_labels
from tests.free.helpers import tiny_models

NORM = CIFAR100_NORM


def _tasks(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [RecoveredTask(torch.rand(10, 3, 16, 16, generator=g, dtype=torch.float64), task_labels(5, 2), i, 0.0, 0.0)
            for i in range(n)]


def _kd(params, learner, teacher, task):
    x = NORM.unit(task.images)
    t = teacher(x)
    s = torch.func.functional_call(learner, params, (x,))
    logp_t = t - t.logsumexp(-1, keepdim=True)
    logp_s = s - s.logsumexp(-1, keepdim=True)
    return (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean()


def test_sgd_inner_and_interpolated_outer_by_hand():
    _, teachers, learner = tiny_models(teachers=2)
    tasks = _tasks()
    theta = {n: p.detach().clone() for n, p in learner.named_parameters()}
    alpha, eps = 0.1, 0.3
    tilde = dict(theta)
    for task, teacher in zip(tasks, teachers):  # Algorithm 2, lines 4-6
        p = {n: v.clone().requires_grad_(True) for n, v in tilde.items()}
        grads = torch.autograd.grad(_kd(p, learner, teacher, task), list(p.values()))
        tilde = {n: p[n].detach() - alpha * g for n, g in zip(p, grads)}
    bell_reference(learner, tasks, teachers, NORM, BellConfig(inner_optimizer="sgd", inner_lr=alpha, epsilon=eps))
    for n, p in learner.named_parameters():  # line 7
        torch.testing.assert_close(p.detach(), theta[n] + eps * (tilde[n] - theta[n]), rtol=1e-10, atol=1e-12)
    assert any(not torch.equal(p.detach(), theta[n]) for n, p in learner.named_parameters())


def test_published_outer_update_feeds_the_scaled_difference_to_the_optimizer():
    _, teachers, learner = tiny_models(teachers=2)
    tasks = _tasks()
    ref = copy.deepcopy(learner)
    bell_reference(ref, tasks, teachers, NORM, BellConfig(inner_lr=0.01, epsilon=1.0))  # eps=1: ref = theta_tilde
    theta = {n: p.detach().clone() for n, p in learner.named_parameters()}
    opt = torch.optim.SGD(learner.parameters(), lr=0.01)
    bell_reference(learner, tasks, teachers, NORM, BellConfig(inner_lr=0.01, outer="adam", grad_scale=67.0), opt)
    for (n, p), q in zip(learner.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), theta[n] - 0.01 * 67.0 * (theta[n] - q.detach()), rtol=1e-9, atol=1e-12)


def test_erm_is_one_step_on_the_mean_loss():
    _, teachers, learner = tiny_models(teachers=2)
    tasks = _tasks()
    p = {n: v.detach().clone().requires_grad_(True) for n, v in learner.named_parameters()}
    mean = sum(_kd(p, learner, t, task) for t, task in zip(teachers, tasks)) / 2
    grads = dict(zip(p, torch.autograd.grad(mean, list(p.values()))))
    bell_reference(learner, tasks, teachers, NORM, BellConfig(mode="erm"), torch.optim.SGD(learner.parameters(), lr=0.1))
    for n, q in learner.named_parameters():
        torch.testing.assert_close(q.detach(), p[n].detach() - 0.1 * grads[n], rtol=1e-10, atol=1e-12)


def test_hard_labels_use_cross_entropy():
    _, teachers, learner = tiny_models(teachers=1)
    task = _tasks(1)[0]
    p = {n: v.detach().clone().requires_grad_(True) for n, v in learner.named_parameters()}
    logits = torch.func.functional_call(learner, p, (NORM.unit(task.images),))
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, task.labels), list(p.values()))
    bell_reference(learner, [task], teachers, NORM,
                   BellConfig(inner_optimizer="sgd", inner_lr=0.1, epsilon=1.0, targets="hard"))
    for (n, q), g in zip(learner.named_parameters(), grads):
        torch.testing.assert_close(q.detach(), p[n].detach() - 0.1 * g, rtol=1e-10, atol=1e-12)


def test_gradient_alignment_of_identical_tasks_is_one():
    _, teachers, learner = tiny_models(teachers=1)
    task = _tasks(1)[0]
    stats = gradient_alignment(learner, [task, task], teachers * 2, NORM)
    assert stats["cosine"] == pytest.approx(1.0) and stats["conflicting_pairs"] == 0 and stats["inner_product"] > 0


def test_bell_errors():
    _, teachers, learner = tiny_models(teachers=1)
    with pytest.raises(FastFreeError, match="one teacher per recovered task"):
        bell_reference(learner, _tasks(2), teachers, NORM, BellConfig())
    with pytest.raises(FastFreeError, match="needs the meta-learner's optimiser"):
        bell_reference(learner, _tasks(1), teachers, NORM, BellConfig(outer="adam"))
    with pytest.raises(FastFreeError, match="outer='rmsprop'"):
        BellConfig(outer="rmsprop")


def test_bell_augments_all_tasks_with_one_draw_and_only_when_asked():
    """--bell-augment: one crop-and-flip draw (from FIVE's augmentation stream) for all b tasks, as
    the published code transforms its stacked tasks; off, the tasks and the stream are untouched."""
    from fastfree.free.augment import crop_flip, draw_crop_flip
    from fastfree.free.trainer import bell_inputs

    tasks = [RecoveredTask(torch.rand(10, 3, 32, 32), torch.arange(5).repeat_interleave(2), i, 0.0, 0.0)
             for i in range(3)]
    rng = torch.Generator().manual_seed(3)
    state = rng.get_state()
    assert bell_inputs(tasks, BellConfig(), rng) is tasks and torch.equal(rng.get_state(), state)
    got = bell_inputs(tasks, BellConfig(augment=True), rng)
    draw = draw_crop_flip(4, torch.Generator().manual_seed(3))
    assert draw != (4, 4, False)  # this seed's draw moves the images: the comparison below can fail
    for t, a in zip(tasks, got):
        assert torch.equal(a.images, crop_flip(t.images, *draw)) and a.labels is t.labels and a.teacher == t.teacher
