"""Cross-task replay (Eq. 4): the MAML meta-batch against a hand-unrolled inner loop (float64),
the sum over tasks, the authors' patience rule, and the outer optimiser step."""

import copy

import pytest
import torch
import torch.nn.functional as F

import fastfree.free.replay as replay_mod
from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.free.memory import MemoryBank
from fastfree.free.replay import ReplayConfig, maml_meta_batch_reference, replay
from fastfree.models import Conv4
from tests.free.helpers import filled_bank

SIZE = 16


def learner(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return Conv4(num_classes=3, width=4, image_size=SIZE).to(dtype)


def conv4_forward(p, x):
    """Conv4 written out by hand: BatchNorm with the batch's own statistics (no running stats)."""
    for i in (0, 4, 8, 12):
        x = F.conv2d(x, p[f"features.{i}.weight"], p[f"features.{i}.bias"], padding=1)
        x = F.batch_norm(x, None, None, p[f"features.{i + 1}.weight"], p[f"features.{i + 1}.bias"], training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), p["classifier.weight"], p["classifier.bias"])


def unrolled_two_steps(model, batch, lr, second_order):
    """Two inner SGD steps per task, written out; outer loss summed over the tasks."""
    names = [n for n, _ in model.named_parameters()]
    p0 = [p for _, p in model.named_parameters()]
    mean = torch.tensor(CIFAR100_NORM.mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(CIFAR100_NORM.std, dtype=torch.float64).view(3, 1, 1)
    total, correct = 0.0, []
    for t in range(len(batch)):
        xs, ys = (batch.support[t] - mean) / std, batch.support_labels[t]
        xq, yq = (batch.query[t] - mean) / std, batch.query_labels[t]
        loss0 = F.cross_entropy(conv4_forward(dict(zip(names, p0)), xs), ys)
        g0 = torch.autograd.grad(loss0, p0, create_graph=second_order)
        if not second_order:
            g0 = [g.detach() for g in g0]
        p1 = [p - lr * g for p, g in zip(p0, g0)]
        loss1 = F.cross_entropy(conv4_forward(dict(zip(names, p1)), xs), ys)
        g1 = torch.autograd.grad(loss1, p1, create_graph=second_order)
        if not second_order:
            g1 = [g.detach() for g in g1]
        p2 = [p - lr * g for p, g in zip(p1, g1)]
        logits = conv4_forward(dict(zip(names, p2)), xq)
        total = total + F.cross_entropy(logits, yq)
        correct.append((logits.argmax(-1) == yq).double().mean())
    grads = torch.autograd.grad(total, p0)
    return dict(zip(names, grads)), total.detach(), torch.stack(correct).mean()


@pytest.mark.parametrize("second_order", [True, False])
def test_meta_batch_equals_hand_unrolled_maml_float64(second_order):
    model = learner()
    batch = filled_bank().sample_tasks(2, 3, 2, 3, torch.Generator().manual_seed(0))
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=2, queries=3, inner_steps=2, inner_lr=0.3,
                       second_order=second_order)
    before = copy.deepcopy(model.state_dict())
    grads, loss, acc = maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg)
    want, want_loss, want_acc = unrolled_two_steps(model, batch, 0.3, second_order)
    assert set(grads) == set(want)
    for n in want:
        torch.testing.assert_close(grads[n], want[n], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(acc, want_acc)
    # the learner is untouched: no .grad, same parameters and running statistics
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # first order really drops the second-order terms (so this test can fail)
    other, _, _ = unrolled_two_steps(model, batch, 0.3, not second_order)
    gap = max((grads[n] - other[n]).abs().max().item() for n in want)
    assert gap > 1e-6


def test_outer_gradient_is_the_sum_over_tasks():
    model = learner(1)
    batch = filled_bank(seed=1).sample_tasks(3, 3, 1, 2, torch.Generator().manual_seed(3))
    cfg = ReplayConfig(meta_batch=3, ways=3, shots=1, queries=2, inner_steps=2, inner_lr=0.1)
    grads, loss, acc = maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg)
    parts = [maml_meta_batch_reference(model, batch.task(t), CIFAR100_NORM, cfg) for t in range(3)]
    for n in grads:
        torch.testing.assert_close(grads[n], sum(p[0][n] for p in parts), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss, sum(p[1] for p in parts), rtol=1e-12, atol=0)
    torch.testing.assert_close(acc, sum(p[2] for p in parts) / 3)
    # the tasks differ, so a mean instead of a sum would be caught
    assert (parts[0][0]["classifier.weight"] - parts[1][0]["classifier.weight"]).abs().max() > 1e-6


def test_unit_normalization_matches_the_uint8_normalization():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(CIFAR100_NORM.unit(x.double() / 255),
                               CIFAR100_NORM(x, torch.float64))


def scripted(monkeypatch, accuracies):
    """Replace the meta-batch with one returning scripted accuracies; record the batches it gets."""
    seen = []

    def fake(learner, batch, normalization, cfg):
        seen.append(batch)
        i = len(seen) - 1
        grads = {n: torch.zeros_like(p) for n, p in learner.named_parameters()}
        return grads, torch.tensor(float(i)), torch.tensor(accuracies[i], dtype=torch.float64)

    monkeypatch.setattr(replay_mod, "maml_meta_batch_reference", fake)
    return seen


@pytest.mark.parametrize("accuracies, patience, expected", [
    ([0.2, 0.3, 0.3, 0.25, 0.28, 0.9, 0.9], 3, 5),           # ties and drops are no gain
    ([0.2, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1, 0.9, 0.9], 3, 7),   # a new best resets the count
    ([0.5] * 20, 1, 2),                                       # at least patience + 1 meta-batches
    ([0.2, 0.1, 0.15, 0.12, 0.18, 0.19, 0.9], 5, 6),          # gain over the best, not over the previous one
])
def test_patience_rule(monkeypatch, accuracies, patience, expected):
    seen = scripted(monkeypatch, accuracies)
    model = learner()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2, patience=patience, max_meta_batches=50)
    stats = replay(model, opt, filled_bank(), CIFAR100_NORM, cfg, torch.Generator().manual_seed(0))
    assert stats["meta_batches"] == expected == len(seen)
    assert stats["stopped"] == "patience"
    assert stats["accuracies"] == accuracies[:expected]
    assert stats["best_accuracy"] == max(accuracies[:expected])
    assert stats["last_accuracy"] == accuracies[expected - 1]
    assert stats["mean_outer_loss"] == pytest.approx(sum(range(expected)) / expected)
    assert all(b.support.shape == (2, 3, 3, SIZE, SIZE) and b.query.shape == (2, 6, 3, SIZE, SIZE) for b in seen)
    assert not torch.equal(seen[0].query, seen[1].query)  # a fresh meta-batch each time


def test_max_meta_batches_caps_a_run(monkeypatch):
    scripted(monkeypatch, [i / 100 for i in range(100)])  # always a gain
    model = learner()
    cfg = ReplayConfig(meta_batch=1, ways=3, shots=1, queries=2, patience=2, max_meta_batches=7)
    stats = replay(model, torch.optim.SGD(model.parameters(), lr=0.1), filled_bank(), CIFAR100_NORM, cfg,
                   torch.Generator())
    assert stats["meta_batches"] == 7 and stats["stopped"] == "max_meta_batches"


def test_replay_on_a_bank_that_cannot_form_tasks_does_nothing():
    model = learner()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2)
    for bank in (MemoryBank(image_shape=(3, SIZE, SIZE)), filled_bank(classes=2)):
        stats = replay(model, opt, bank, CIFAR100_NORM, cfg, torch.Generator())
        assert stats["meta_batches"] == 0 and stats["stopped"] == "bank_too_small"
        assert stats["last_accuracy"] is None and stats["accuracies"] == []
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_replay_steps_the_optimizer_with_the_meta_gradient():
    model = learner(2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    running = model.features[1].running_mean.clone()
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2, inner_steps=1, inner_lr=0.1, max_meta_batches=1)
    bank = filled_bank(seed=2)
    # the gradient replay must apply: the reference on the batch the same generator state draws
    expected_batch = bank.sample_tasks(2, 3, 1, 2, torch.Generator().manual_seed(4))
    grads, _, _ = maml_meta_batch_reference(model, expected_batch, CIFAR100_NORM, cfg)
    stats = replay(model, torch.optim.SGD(model.parameters(), lr=0.5), bank, CIFAR100_NORM, cfg,
                   torch.Generator().manual_seed(4))
    assert stats["meta_batches"] == 1 and stats["stopped"] == "max_meta_batches"
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - 0.5 * grads[n], rtol=1e-12, atol=1e-14)
    assert max((p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()) > 1e-4
    assert torch.equal(model.features[1].running_mean, running)  # replay never touches running stats


def test_replay_with_adam_float32_runs_and_changes_parameters():
    model = learner(3, torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2, inner_steps=2, patience=1, max_meta_batches=3)
    stats = replay(model, opt, filled_bank(dtype=torch.float32), CIFAR100_NORM, cfg, torch.Generator().manual_seed(0))
    assert 2 <= stats["meta_batches"] <= 3 and 0.0 <= stats["best_accuracy"] <= 1.0
    assert stats["mean_outer_loss"] > 0
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert "classifier.weight" in changed and "features.0.weight" in changed


@pytest.mark.parametrize("kwargs", [
    dict(meta_batch=0), dict(ways=1), dict(shots=0), dict(queries=0), dict(inner_steps=-1),
    dict(inner_lr=0.0), dict(outer_lr=float("nan")), dict(patience=0), dict(max_meta_batches=0),
    dict(second_order=1), dict(shots=1.5),
])
def test_config_validation(kwargs):
    with pytest.raises(FastFreeError):
        ReplayConfig(**kwargs)
