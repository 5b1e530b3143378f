"""FIVE against its equations: one inner step by hand, the first-order meta-gradient, the update."""

import copy

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.free.augment import draw_crop_flip
from fastfree.free.five import FiveConfig, adapt_generator, apply_meta_gradient, five_reference, task_labels
from fastfree.free.losses import inversion_loss
from tests.free.helpers import tiny_models

NORM = CIFAR100_NORM


def _hand_loss(gen_params, gen, z, teacher, learner, y, top, left, flip):
    x = torch.func.functional_call(gen, gen_params, (z,))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    view = padded[..., top : top + 16, left : left + 16]
    if flip:
        view = view.flip(-1)
    mean = torch.tensor(NORM.mean, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(NORM.std, dtype=x.dtype).view(3, 1, 1)
    view = (view - mean) / std
    t = teacher(view)
    s = learner(view).detach()
    logp_t = t - t.logsumexp(-1, keepdim=True)
    logp_s = s - s.logsumexp(-1, keepdim=True)
    ce = -logp_t[torch.arange(len(y)), y]
    kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    eta = (t.argmax(-1) == s.argmax(-1)).double()
    return (ce - eta * kl).mean(), eta


def test_one_inner_step_is_a_hand_written_adam_step_on_eq1():
    gen, (teacher, _), learner = tiny_models()
    cfg = FiveConfig(k=1, lr=0.01, images_per_class=4)
    y = task_labels(5, 4)
    z = torch.randn(20, 8, dtype=torch.float64)
    adapted, z1, _ = adapt_generator(gen, teacher, learner, z, y, NORM, cfg, True, torch.Generator().manual_seed(3))

    top, left, flip = draw_crop_flip(4, torch.Generator().manual_seed(3))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in gen.named_parameters()}
    z0 = z.clone().requires_grad_(True)
    loss, eta = _hand_loss(params, gen, z0, teacher, learner, y, top, left, flip)
    assert 0 < eta.sum() < 20
    grads = torch.autograd.grad(loss, [*params.values(), z0])
    b1, b2, eps = 0.5, 0.999, 1e-8
    for (name, p), g in zip([*params.items(), ("z", z0)], grads):
        m, v = (1 - b1) * g, (1 - b2) * g * g
        expected = p - cfg.lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
        got = z1 if name == "z" else dict(adapted.named_parameters())[name]
        torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-9, atol=1e-12, msg=name)
    # the original meta-generator is untouched
    for n, p in gen.named_parameters():
        assert torch.equal(p, params[n].detach())


def test_k_inner_steps_are_k_adam_steps_on_eq1_each_on_a_fresh_view():
    """Steps after the first, written without adapt_generator: torch's Adam over the generator's
    parameters and z together, Eq. 1 by hand, a new crop/flip drawn at every step."""
    gen, (teacher, _), learner = tiny_models()
    cfg = FiveConfig(k=3, lr=0.01, images_per_class=4)
    y = task_labels(5, 4)
    z = torch.randn(20, 8, dtype=torch.float64)
    adapted, z_k, losses = adapt_generator(gen, teacher, learner, z, y, NORM, cfg, True,
                                           torch.Generator().manual_seed(3))

    hand = copy.deepcopy(gen)
    params = dict(hand.named_parameters())
    z_hand = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([*params.values(), z_hand], lr=cfg.lr, betas=(0.5, 0.999))
    rng, hand_losses = torch.Generator().manual_seed(3), []
    for _ in range(3):
        loss, _ = _hand_loss(params, hand, z_hand, teacher, learner, y, *draw_crop_flip(4, rng))
        opt.zero_grad()
        loss.backward()
        opt.step()
        hand_losses.append(float(loss.detach()))
    assert losses == pytest.approx(hand_losses, rel=1e-10) and len(set(losses)) == 3
    torch.testing.assert_close(z_k.detach(), z_hand.detach(), rtol=1e-9, atol=1e-12)
    for n, p in adapted.named_parameters():
        torch.testing.assert_close(p.detach(), params[n].detach(), rtol=1e-9, atol=1e-12, msg=n)


def test_meta_gradient_is_the_mean_gradient_at_the_adapted_weights():
    gen, teachers, learner = tiny_models()
    cfg = FiveConfig(k=2, lr=0.01, images_per_class=3)
    tasks, meta = five_reference(gen, teachers, [7, 9], learner, NORM, cfg, True,
                                 torch.Generator().manual_seed(5), torch.Generator().manual_seed(6))
    rng, latent = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    expected = {n: torch.zeros_like(p) for n, p in gen.named_parameters()}
    y = task_labels(5, 3)
    for teacher, task, tid in zip(teachers, tasks, [7, 9]):
        z = torch.randn(15, 8, generator=latent, dtype=torch.float64)
        adapted, z_i, _ = adapt_generator(gen, teacher, learner, z, y, NORM, cfg, True, rng)
        top, left, flip = draw_crop_flip(4, rng)
        params = dict(adapted.named_parameters())
        loss, _ = _hand_loss(params, adapted, z_i.detach(), teacher, learner, y, top, left, flip)
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            expected[n] += g / 2
        torch.testing.assert_close(task.images, adapted(z_i).detach())  # the recovered task is G(Z^i; theta^i)
        assert task.teacher == tid and torch.equal(task.labels, y)
        assert 0.0 <= task.images.min() and task.images.max() <= 1.0
    for n in expected:
        torch.testing.assert_close(meta[n], expected[n], rtol=1e-9, atol=1e-12, msg=n)
    assert any(g.abs().sum() > 0 for g in meta.values())


def test_warm_up_uses_ce_only():
    gen, (teacher, _), learner = tiny_models()
    cfg = FiveConfig(k=0, images_per_class=2)
    y = task_labels(5, 2)
    tasks, _ = five_reference(gen, [teacher], [0], learner, NORM, cfg, False,
                              torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    z = torch.randn(10, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = gen(z)
    rng = torch.Generator().manual_seed(0)
    from fastfree.free.augment import random_crop_flip

    ce, _ = inversion_loss(teacher(NORM.unit(random_crop_flip(x, rng))), learner(x), y, adversarial=False)
    assert abs(tasks[0].final_loss - float(ce.detach())) < 1e-9


def test_meta_generator_update_uses_its_persistent_optimizer():
    gen, _, _ = tiny_models()
    before = copy.deepcopy(gen)
    opt = torch.optim.SGD(gen.parameters(), lr=0.5)
    grad = {n: torch.full_like(p, 2.0) for n, p in gen.named_parameters()}
    apply_meta_gradient(gen, grad, opt)
    for (n, p), q in zip(gen.named_parameters(), before.parameters()):
        torch.testing.assert_close(p, q - 1.0)
        assert p.grad is None


def test_sequential_generator_carries_the_adapted_weights_to_the_next_teacher():
    gen, teachers, learner = tiny_models()
    cfg = FiveConfig(k=2, lr=0.01, images_per_class=2)
    seq = copy.deepcopy(gen)
    five_reference(seq, teachers, [0, 1], learner, NORM, cfg, True,
                   torch.Generator().manual_seed(1), torch.Generator().manual_seed(2), sequential=True)
    rng, latent = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    current = gen
    y = task_labels(5, 2)
    for teacher in teachers:
        z = torch.randn(10, 8, generator=latent, dtype=torch.float64)
        current, _, _ = adapt_generator(current, teacher, learner, z, y, NORM, cfg, True, rng)
        draw_crop_flip(4, rng)  # the final view's draw
    for p, q in zip(seq.parameters(), current.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert any(not torch.equal(p, q) for p, q in zip(seq.parameters(), gen.parameters()))
