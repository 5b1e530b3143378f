"""Whole FREE runs: the fast engine and the reference give the same run from the same seed (float64)."""

import copy

import pytest
import torch

from fastfree.engine.options import EngineOptions
from fastfree.engine.trainer import FastEngine
from fastfree.free.run import RunContext, train_free
from tests.engine.test_bell import assert_same_learner
from tests.free.test_run import CFG, _ctx


def _run(tmp_path, dataset, engine_options, cfg=CFG):
    ctx = _ctx(tmp_path, dataset)
    teachers = [copy.deepcopy(t).double() for t in ctx.teachers]
    engine = None if engine_options is None else FastEngine(teachers, engine_options, torch.device("cpu"))
    ctx = RunContext(ctx.run_dir, cfg, dataset, teachers, ctx.teacher_classes, ctx.val_config, ctx.device, engine,
                     torch.float64)
    return train_free(ctx, resume=False)


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
def test_fast_engine_run_equals_the_reference_run(tiny_dataset, tmp_path, vectorize):
    cfg = CFG  # 5 iterations, 1 warm-up, b=2, k=2, replay with patience
    ref = _run(tmp_path / "ref", tiny_dataset, None, cfg)
    fast = _run(tmp_path / "fast", tiny_dataset, EngineOptions(vectorize=vectorize), cfg)
    assert fast.iteration == ref.iteration == cfg.iterations
    for n, p in ref.generator.named_parameters():
        torch.testing.assert_close(dict(fast.generator.named_parameters())[n], p, rtol=1e-9, atol=1e-12, msg=n)
    assert_same_learner(fast.learner, ref.learner, image_size=32)
    assert len(fast.bank) == len(ref.bank) > 0
    for k in ("teachers", "latent", "augment", "replay"):  # the same random numbers were drawn
        assert torch.equal(fast.rngs[k].get_state(), ref.rngs[k].get_state()), k
