"""Multi-architecture pools (Table 4): SGD for ResNets, batched = reference in float64, save and load."""

import collections

from dataclasses import replace

import pytest
import torch

from fastfree.cli import build_parser
from fastfree.commands.pretrain import pretrain_config
from fastfree.config import get_preset
from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.optim import SgdState, sgd_step
from fastfree.pool.optimizers import OptimizerSpec
from fastfree.pool.pretrain import PretrainConfig, init_teacher, pretrain_pool, train_teacher_reference, \
    train_teachers_batched
from fastfree.pool.store import load_pool, records_from_training, save_pool
from fastfree.pool.teachers import sample_teacher_specs

TABLE4 = ("conv4", "resnet10", "resnet18")
# tiny: 4 filters for every architecture, one epoch of 2 steps (5 classes x 8 images, batch 20)
TINY = PretrainConfig(teachers=4, archs=TABLE4, width=4, epochs=1, batch_size=20)
MIXED_SEED = 3  # gives 4 teachers of all three architectures (asserted below)


def mixed_pool(split, path, engine="reference"):
    """A tiny trained Table-4 pool on `split`, saved to `path` and loaded back."""
    specs = sample_teacher_specs(split.classes, TINY.teachers, TINY.ways, MIXED_SEED, TINY.archs)
    trained = pretrain_pool(split, CIFAR100_NORM, specs, TINY, engine, torch.float64)
    save_pool(path, records_from_training(trained, TINY, split.image_size), [t.state_dict for t in trained], "tiny",
              CIFAR100_NORM, TINY.to_dict())
    return load_pool(path), trained


def test_functional_sgd_is_torch_sgd():
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, 4, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g,
                                                                                          dtype=torch.float64)}
    torch_params = [torch.nn.Parameter(p.clone()) for p in params.values()]
    opt = torch.optim.SGD(torch_params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    state = SgdState.zeros_like(params)
    for _ in range(3):
        grads = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
        for p, gr in zip(torch_params, grads.values()):
            p.grad = gr.clone()
        opt.step()
        params, state = sgd_step(params, grads, state, 0.01, 0.9, 5e-4)
    for got, want in zip(params.values(), torch_params):
        torch.testing.assert_close(got, want.detach(), rtol=1e-14, atol=1e-15)


def test_resnets_train_with_sgd_and_conv4_with_adam():
    cfg = PretrainConfig(archs=TABLE4)
    # the authors' MultiStepLR: Conv4's milestone 70 lies beyond 60 epochs, the ResNets' 80 too
    assert cfg.optimizer_for("conv4") == OptimizerSpec("adam", 0.01)
    assert cfg.optimizer_for("resnet10") == cfg.optimizer_for("resnet18") == \
        OptimizerSpec("sgd", 0.01, 0.9, 5e-4, (30, 50), 0.2)
    assert replace(cfg, epochs=100).optimizer_for("conv4") == OptimizerSpec("adam", 0.01, milestones=(70,))
    # recorded (and compared on --resume): only the milestones that take effect
    assert (cfg.to_dict()["conv4_milestones"], cfg.to_dict()["resnet_milestones"]) == ([], [30, 50])
    assert (PretrainConfig().to_dict()["conv4_milestones"], PretrainConfig().to_dict()["resnet_milestones"]) == ([], [])
    assert PretrainConfig(resnet_optimizer="adam").optimizer_for("resnet18") == \
        OptimizerSpec("adam", 0.01, milestones=(30, 50))  # the schedule stays the ResNets'
    assert get_preset("cifar-fs-multiarch").pretrain.archs == TABLE4
    with pytest.raises(FastFreeError, match="archs"):
        PretrainConfig(archs=("conv4", "vgg"))
    with pytest.raises(FastFreeError, match="resnet_optimizer"):
        PretrainConfig(resnet_optimizer="rmsprop")


def test_learning_rate_schedule_is_torch_multisteplr():
    """Bit for bit over the ResNets' 100 epochs: one multiplication per milestone, as torch (0.01 * 0.2 ** 2
    would round differently from 0.01 * 0.2 * 0.2)."""
    spec = OptimizerSpec("sgd", 0.01, 0.9, 5e-4, (30, 50, 80), 0.2)
    opt = spec.torch([torch.nn.Parameter(torch.zeros(1))])
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, list(spec.milestones), spec.gamma)
    for epoch in range(100):
        assert spec.lr_at(epoch) == opt.param_groups[0]["lr"], epoch
        opt.step()
        schedule.step()
    assert spec.lr_at(99) == pytest.approx(0.01 * 0.2 ** 3)


def test_batched_sgd_training_equals_one_by_one_float64(tiny_split):
    # the ResNets' schedule fires within the 2 epochs (milestone 1): the batched trainer's rate per epoch
    # is torch's MultiStepLR in the reference
    cfg = PretrainConfig(teachers=2, archs=("resnet10",), width=4, epochs=2, batch_size=20, resnet_milestones=(1,))
    assert cfg.optimizer_for("resnet10").milestones == (1,)
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=1, archs=cfg.archs)
    for spec, got in zip(specs, train_teachers_batched(tiny_split, CIFAR100_NORM, specs, cfg, torch.float64)):
        ref = train_teacher_reference(tiny_split, CIFAR100_NORM, spec, cfg, torch.float64)
        assert (got.heldout_accuracy, got.best_epoch) == (ref.heldout_accuracy, ref.best_epoch)
        for k, v in ref.state_dict.items():  # no conv bias before a BatchNorm in a ResNet: all compare
            torch.testing.assert_close(got.state_dict[k], v, rtol=1e-10, atol=1e-12, msg=k)


def test_architectures_are_drawn_per_teacher_on_their_own_stream(tiny_split):
    specs = sample_teacher_specs(tiny_split.classes, 300, 5, seed=0, archs=TABLE4)
    counts = collections.Counter(s.arch for s in specs)
    assert set(counts) == set(TABLE4) and min(counts.values()) > 70  # uniform draws, not a split
    plain = sample_teacher_specs(tiny_split.classes, 300, 5, seed=0)
    assert [(s.classes, s.seed) for s in specs] == [(s.classes, s.seed) for s in plain]
    assert {s.arch for s in plain} == {"conv4"}


def test_a_mixed_pool_trains_batched_as_one_by_one_saves_and_loads(tiny_split, tmp_path):
    pool, trained = mixed_pool(tiny_split, tmp_path / "ref")
    assert [r.arch for r in pool.records] == [t.spec.arch for t in trained]
    assert set(r.arch for r in pool.records) == set(TABLE4)
    assert all(r.width == 4 for r in pool.records)
    batched, _ = mixed_pool(tiny_split, tmp_path / "batched", engine="batched")  # grouped by arch, order kept
    x = CIFAR100_NORM(tiny_split.images[:12], torch.float64)
    for i, t in enumerate(trained):
        assert pool.state_dicts[i].keys() == t.state_dict.keys()
        assert all(torch.equal(pool.state_dicts[i][k], v) for k, v in t.state_dict.items())  # saved, loaded exactly
        ref, got = (init_teacher(t.spec, TINY, 32).double().eval() for _ in range(2))
        ref.load_state_dict(t.state_dict)
        got.load_state_dict(batched.state_dicts[i])
        torch.testing.assert_close(got(x), ref(x), rtol=1e-9, atol=1e-9)
        assert batched.records[i].heldout_accuracy == pool.records[i].heldout_accuracy


def test_pretrain_flags_pick_one_or_several_architectures():
    base = get_preset("demo").pretrain
    parse = build_parser().parse_args
    assert pretrain_config(parse(["pretrain", "--archs", *TABLE4]), base).archs == TABLE4
    assert pretrain_config(parse(["pretrain", "--arch", "resnet10"]), base).archs == ("resnet10",)
    assert pretrain_config(parse(["pretrain"]), base).archs == ("conv4",)
    with pytest.raises(FastFreeError, match="--arch and --archs"):
        pretrain_config(parse(["pretrain", "--arch", "conv4", "--archs", "conv4"]), base)
