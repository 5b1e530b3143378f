import pytest
import torch
import torch.nn.functional as F

from fastfree.free.augment import crop_flip, draw_crop_flip
from fastfree.free.losses import distillation_loss, inversion_loss, kl_per_sample


def test_kl_is_a_true_kl():
    torch.manual_seed(0)
    p, q = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    expected = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(kl_per_sample(p, q).double(), expected, rtol=1e-6, atol=1e-7)
    assert torch.all(kl_per_sample(p, p) < 1e-6)


def test_inversion_loss_by_hand():
    torch.manual_seed(1)
    t = torch.randn(40, 5, requires_grad=True)
    s = torch.randn(40, 5, requires_grad=True)
    y = torch.randint(0, 5, (40,))
    loss, eta = inversion_loss(t, s, y)
    logp_t = t - t.logsumexp(-1, keepdim=True)
    logp_s = s - s.logsumexp(-1, keepdim=True)
    ce = -logp_t[torch.arange(40), y]
    kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    agree = (t.argmax(-1) == s.argmax(-1)).float()
    assert 0 < agree.sum() < 40  # both branches of the indicator are exercised
    torch.testing.assert_close(loss, (ce - agree * kl).mean())
    torch.testing.assert_close(eta, agree)
    loss.backward()
    assert s.grad is None and t.grad is not None  # the meta-learner gets no gradient
    warm, _ = inversion_loss(t, s, y, adversarial=False)
    torch.testing.assert_close(warm, ce.mean())


def test_distillation_gradient_only_to_student():
    t = torch.randn(6, 5, requires_grad=True)
    s = torch.randn(6, 5, requires_grad=True)
    distillation_loss(t, s).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_crop_flip_geometry():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    assert torch.equal(crop_flip(x, 4, 4, False), x)  # the centred window is the image
    assert torch.equal(crop_flip(x, 4, 4, True), x.flip(-1))
    shifted = crop_flip(x, 5, 3, False)  # one row down, one column left
    assert torch.equal(shifted[..., :-1, 1:], x[..., 1:, :-1])
    assert torch.all(shifted[..., -1, :] == 0) and torch.all(shifted[..., :, 0] == 0)


def test_crop_flip_draws_cover_the_range():
    g = torch.Generator().manual_seed(0)
    draws = [draw_crop_flip(4, g) for _ in range(2000)]
    tops = {d[0] for d in draws}
    flips = sum(d[2] for d in draws) / len(draws)
    assert tops == set(range(9)) and flips == pytest.approx(0.5, abs=0.05)


def test_inversion_loss_over_rows_of_any_batch_shape():
    torch.manual_seed(2)
    t, s = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (3, 4))
    loss, eta = inversion_loss(t, s, y)
    flat, flat_eta = inversion_loss(t.reshape(12, 5), s.reshape(12, 5), y.reshape(12))
    torch.testing.assert_close(loss, flat)
    torch.testing.assert_close(eta, flat_eta)
