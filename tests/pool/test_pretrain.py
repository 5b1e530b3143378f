import pytest
import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.pool.pretrain import PretrainConfig, pretrain_pool, train_teacher_reference, train_teachers_batched
from fastfree.pool.teachers import sample_teacher_specs, teacher_data
from tests.conftest import DEVICES

# A conv bias directly before BatchNorm has a true gradient of zero: its computed gradient is
# rounding noise that Adam normalises into lr-sized steps, so those biases (and the BN running
# means they shift) cannot agree to rounding between two correct implementations. They do
# not change any output (BN subtracts them), which the logits comparison below checks.
NOISE_ONLY = ("features.0.bias", "features.4.bias", "features.8.bias", "features.12.bias")


def _compare(ref, got):
    for k, v in ref.state_dict.items():
        if k in NOISE_ONLY or k.endswith("running_mean"):
            torch.testing.assert_close(got.state_dict[k], v, rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(got.state_dict[k], v, rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("epochs, max_steps", [(1, 2), (2, None)])
def test_batched_pool_training_equals_one_by_one_float64(tiny_split, epochs, max_steps, device):
    # 5 classes x 8 training images per teacher, batch 20: 2 steps per epoch
    tiny_split = tiny_split.to(device)
    cfg = PretrainConfig(teachers=3, epochs=epochs, batch_size=20)
    specs = sample_teacher_specs(tiny_split.classes, 3, 5, seed=1)
    batched = train_teachers_batched(tiny_split, CIFAR100_NORM, specs, cfg, torch.float64, max_steps=max_steps)
    for spec, got in zip(specs, batched):
        ref = train_teacher_reference(tiny_split, CIFAR100_NORM, spec, cfg, torch.float64, max_steps=max_steps)
        assert got.heldout_accuracy == ref.heldout_accuracy and got.best_epoch == ref.best_epoch
        _compare(ref, got)
        # identical predictions of the kept (best) models
        from fastfree.pool.pretrain import init_teacher

        x = CIFAR100_NORM(tiny_split.images[:16], torch.float64)
        assert got.state_dict["classifier.weight"].device.type == device
        models = []
        for sd in (ref.state_dict, got.state_dict):
            m = init_teacher(spec, cfg, 32).double().eval().to(device)
            m.load_state_dict(sd)
            models.append(m(x))
        torch.testing.assert_close(models[1], models[0], rtol=1e-9, atol=1e-9)


def test_training_moves_every_teachers_weights(tiny_split):
    """(The images are noise: held-out accuracy says nothing here; that training fits real images is
    measured on CIFAR-FS, README's pool rows.)"""
    from fastfree.pool.pretrain import init_teacher

    cfg = PretrainConfig(teachers=2, epochs=3, batch_size=20)
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=0)
    trained = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg)
    assert [t.spec.index for t in trained] == [0, 1]
    assert all(0 <= t.heldout_accuracy <= 1 and 0 <= t.best_epoch < 3 for t in trained)
    for t in trained:
        start = init_teacher(t.spec, cfg, 32).state_dict()
        assert all(not torch.equal(start[k], v) for k, v in t.state_dict.items() if v.is_floating_point()
                   and not k.endswith("num_batches_tracked")), t.spec.index


def test_teacher_data_split_is_first_80_percent(tiny_split):
    spec = sample_teacher_specs(tiny_split.classes, 1, 5, seed=3)[0]
    data = teacher_data(tiny_split, spec, 0.2)
    first = tiny_split.class_index()[spec.classes[0]]
    assert data.train_idx[:8].tolist() == first[:8].tolist()
    assert data.heldout_idx[:2].tolist() == first[8:].tolist()
    assert data.train_y.tolist() == [c for c in range(5) for _ in range(8)]


def test_teacher_specs_are_seeded_and_valid(tiny_split):
    a = sample_teacher_specs(tiny_split.classes, 20, 5, seed=0)
    assert a == sample_teacher_specs(tiny_split.classes, 20, 5, seed=0)
    assert a != sample_teacher_specs(tiny_split.classes, 20, 5, seed=1)
    assert all(len(set(s.classes)) == 5 for s in a)
    with pytest.raises(FastFreeError, match="only 10 classes"):
        sample_teacher_specs(tiny_split.classes, 2, 11, seed=0)


def test_bad_pretrain_config():
    with pytest.raises(FastFreeError, match="heldout_fraction"):
        PretrainConfig(heldout_fraction=1.5)
    with pytest.raises(FastFreeError, match="epochs=0"):
        PretrainConfig(epochs=0)
