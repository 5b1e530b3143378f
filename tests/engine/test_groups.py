"""Mixed pools on the fast engine: teachers grouped by architecture, each group vmapped, the
tasks back in the sampled order, and the same numbers as the sequential reference (float64)."""

import copy
import json
from dataclasses import replace

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM as NORM
from fastfree.engine.groups import TeacherGroups, merge
from fastfree.engine.options import EngineOptions
from fastfree.engine.trainer import FastEngine
from fastfree.errors import FastFreeError
from fastfree.free.bell import BellConfig
from fastfree.free.config import FreeConfig
from fastfree.free.five import FiveConfig
from fastfree.free.run import RunContext, train_free
from fastfree.free.trainer import ReferenceEngine, init_state
from fastfree.models import build_model
from tests.engine.test_bell import assert_same_learner
from tests.free.test_run import CFG, _ctx
from tests.pool.test_mixed_pool import mixed_pool

CPU = torch.device("cpu")
IDS = [1, 0, 3]  # ResNet-10, Conv4, ResNet-10: both groups, interleaved, b = 3


def _mixed_teachers(image_size=16):
    """Teachers 0, 2: Conv4; 1, 3: ResNet-10; frozen, float64, with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    teachers = []
    for arch in ("conv4", "resnet10", "conv4", "resnet10"):
        t = build_model(arch, 5, 4, image_size).double()
        for bn in (m for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        teachers.append(t.eval().requires_grad_(False))
    return teachers


def test_groups_map_global_ids_and_restore_the_sampled_order():
    teachers = _mixed_teachers()
    groups = TeacherGroups(teachers)
    assert groups.members == [[0, 2], [1, 3]] and groups.where == [(0, 0), (1, 0), (0, 1), (1, 1)]
    parts = groups.split(IDS)
    assert [(p.group, p.positions, p.local) for p in parts] == [(0, (1,), (0,)), (1, (0, 2), (0, 1))]
    rows = torch.arange(3.0)
    assert merge(parts, [rows[[1]], rows[[0, 2]]]).tolist() == [0.0, 1.0, 2.0]
    x = torch.randn(3, 6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = torch.stack([teachers[i](x[j]) for j, i in enumerate(IDS)])  # teacher IDS[j] on x[j]
    torch.testing.assert_close(groups.logits(groups.gather(IDS), x), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack([groups.bound(i)(x[j]) for j, i in enumerate(IDS)]), want,
                               rtol=1e-10, atol=1e-12)


def test_teachers_with_different_class_counts_are_refused():
    with pytest.raises(FastFreeError, match="numbers of classes"):
        TeacherGroups([build_model("conv4", 5, 4, 16).eval(), build_model("resnet10", 4, 4, 16).eval()])


def _state(cfg):
    return init_state(cfg, 16, 5, CPU, torch.float64)


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
@pytest.mark.parametrize("adversarial, generator", [(True, "meta"), (False, "meta"), (True, "sequential")],
                         ids=["eq1", "warmup", "eq1-sequential"])
def test_grouped_five_equals_the_reference_per_teacher(vectorize, adversarial, generator):
    """sequential: each teacher (of either group) starts from the generator the previous one left."""
    teachers = _mixed_teachers()
    cfg = FreeConfig(iterations=2, warmup=1, teachers_per_iteration=3, ngf=4, latent_dim=8, learner_width=4,
                     five=FiveConfig(k=2, lr=0.01, images_per_class=4), generator=generator)
    ref_state, fast_state = _state(cfg), _state(cfg)
    want_tasks, want_grad = ReferenceEngine(teachers).recover(ref_state, IDS, NORM, cfg, adversarial)
    engine = FastEngine(teachers, EngineOptions(vectorize=vectorize), CPU)
    got_tasks, got_grad = engine.recover(fast_state, IDS, NORM, cfg, adversarial)
    for name, g in want_grad.items():  # the mean over all b teachers, from both groups
        torch.testing.assert_close(got_grad[name], g, rtol=1e-10, atol=1e-13, msg=name)
    assert len(got_tasks) == len(want_tasks) == len(IDS)
    for got, want in zip(got_tasks, want_tasks):  # each task where the reference put it
        assert got.teacher == want.teacher
        torch.testing.assert_close(got.images, want.images, rtol=1e-10, atol=1e-13)
        assert got.eta_rate == pytest.approx(want.eta_rate, abs=1e-12)
        assert got.final_loss == pytest.approx(want.final_loss, rel=1e-10)
    for k in ("latent", "augment"):  # the same draws, in the same order
        assert torch.equal(fast_state.rngs[k].get_state(), ref_state.rngs[k].get_state()), k
    moved = ref_state.generator.state_dict()  # sequential: the last teacher's adapted generator; meta: unchanged
    for name, p in fast_state.generator.state_dict().items():
        torch.testing.assert_close(p, moved[name], rtol=1e-10, atol=1e-13, msg=name)
    assert (generator == "sequential") == any(not torch.equal(p, q) for p, q in zip(
        moved.values(), _state(cfg).generator.state_dict().values()))


@pytest.mark.parametrize("bell", [BellConfig(inner_lr=0.05, epsilon=0.3), BellConfig(mode="erm")], ids=["bell", "erm"])
def test_grouped_bell_and_alignment_equal_the_reference(bell):
    teachers = _mixed_teachers()
    cfg = FreeConfig(iterations=2, warmup=1, teachers_per_iteration=3, ngf=4, latent_dim=8, learner_width=4,
                     five=FiveConfig(k=1, lr=0.01, images_per_class=2), bell=bell)
    ref_state, fast_state = _state(cfg), _state(cfg)
    reference, fast = ReferenceEngine(teachers), FastEngine(teachers, EngineOptions(), CPU)
    tasks, _ = reference.recover(copy.deepcopy(ref_state), IDS, NORM, cfg, True)
    want_align = reference.alignment(ref_state, tasks, IDS, NORM, cfg)
    got_align = fast.alignment(fast_state, tasks, IDS, NORM, cfg)
    for k, v in want_align.items():
        assert got_align[k] == pytest.approx(v, rel=1e-9), k
    want = reference.learn(ref_state, tasks, IDS, NORM, cfg)
    got = fast.learn(fast_state, tasks, IDS, NORM, cfg)
    assert got == pytest.approx(want, rel=1e-10)
    assert_same_learner(fast_state.learner, ref_state.learner)


def _run(run_dir, dataset, pool, options, cfg):
    teachers = [m.double().requires_grad_(False) for m in pool.models()]
    engine = None if options is None else FastEngine(teachers, options, CPU)
    val = _ctx(run_dir, dataset).val_config
    ctx = RunContext(run_dir, cfg, dataset, teachers, [r.classes for r in pool.records], val, CPU, engine,
                     torch.float64)
    return train_free(ctx, resume=False)


def test_a_trained_mixed_pool_runs_free_on_both_engines_alike(tiny_dataset, tmp_path):
    pool, _ = mixed_pool(tiny_dataset.train, tmp_path / "pool")  # Conv4, ResNet-10 and ResNet-18 teachers
    cfg = replace(CFG, iterations=3, teachers_per_iteration=3)
    ref = _run(tmp_path / "ref", tiny_dataset, pool, None, cfg)
    sampled = [json.loads(line)["teachers"] for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
               if '"teachers"' in line]
    assert any(len({pool.records[i].arch for i in ids}) > 1 for ids in sampled[cfg.warmup:]), sampled
    fast = _run(tmp_path / "fast", tiny_dataset, pool, EngineOptions(), cfg)
    for n, p in ref.generator.named_parameters():
        torch.testing.assert_close(dict(fast.generator.named_parameters())[n], p, rtol=1e-9, atol=1e-12, msg=n)
    assert_same_learner(fast.learner, ref.learner, image_size=32)
    assert len(fast.bank) == len(ref.bank) > 0
    for k in ("teachers", "latent", "augment", "replay"):
        assert torch.equal(fast.rngs[k].get_state(), ref.rngs[k].get_state()), k
