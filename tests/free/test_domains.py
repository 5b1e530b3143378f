"""Multi-domain runs (Table 3): teachers of two image sizes and normalisations in one FREE run."""

import pytest
import torch
import torch.nn.functional as F

from fastfree.data.domains import combine_domains
from fastfree.data.split import CIFAR100_NORM, IMAGENET_NORM
from fastfree.engine.options import EngineOptions
from fastfree.engine.trainer import FastEngine
from fastfree.errors import FastFreeError
from fastfree.free.domains import TeacherAdapter, adapt_teacher
from fastfree.free.run import RunContext, final_results, results_markdown, train_free
from fastfree.metatest.initializations import random_init
from fastfree.metatest.protocol import MetaTestConfig
from fastfree.models import Conv4
from tests.engine.test_bell import assert_same_learner
from tests.free.test_run import CFG, _params


def test_combine_domains_picks_size_normalisation_and_offsets(tiny_dataset, small_dataset):
    data = combine_domains([small_dataset, tiny_dataset])
    assert data.image_size == 32 and data.normalization == CIFAR100_NORM  # the first domain at the largest size
    assert data.offsets == (0, 16) and data.labels == ("small", "tiny")
    assert combine_domains([tiny_dataset, tiny_dataset]).labels == ("tiny-1", "tiny-2")
    with pytest.raises(FastFreeError, match="at least 2 domains"):
        combine_domains([tiny_dataset])


def test_adapter_is_resize_then_the_teachers_own_normalisation():
    torch.manual_seed(0)
    model = Conv4(5, 4, 16).double().eval()
    adapter = TeacherAdapter(model, 16, IMAGENET_NORM, 32, CIFAR100_NORM)
    unit = torch.rand(6, 3, 32, 32, dtype=torch.float64)  # generator output in [0, 1]
    direct = model(IMAGENET_NORM.unit(F.interpolate(unit, size=(16, 16), mode="bilinear", align_corners=False)))
    torch.testing.assert_close(adapter(CIFAR100_NORM.unit(unit)), direct, rtol=1e-12, atol=1e-12)
    same = Conv4(5, 4, 32).eval()
    assert adapt_teacher(same, 32, CIFAR100_NORM, 32, CIFAR100_NORM) is same  # one domain: nothing wrapped


def _ctx(run_dir, data, dtype=torch.float32, engine_options=None):
    """Two teachers per domain: Conv4 at 32 px (the learner's domain) and at 16 px (resized, renormalised)."""
    torch.manual_seed(0)
    native = [Conv4(5, 4, 32).eval() for _ in range(2)]
    other = [Conv4(5, 4, 16).eval() for _ in range(2)]
    teachers = [adapt_teacher(m.to(dtype).requires_grad_(False), size, norm, data.image_size, data.normalization)
                for m, size, norm in [(m, 32, CIFAR100_NORM) for m in native] + [(m, 16, IMAGENET_NORM) for m in other]]
    off = data.offsets[1]
    classes = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (off, off + 1, off + 2, off + 3, off + 4), (off + 1, off + 3, off + 5,
                                                                                            off, off + 2)]
    engine = None if engine_options is None else FastEngine(teachers, engine_options, torch.device("cpu"))
    val = MetaTestConfig(tasks=4, shots=(1,), queries=2, steps=1, engine="reference")
    return RunContext(run_dir, CFG, data, teachers, classes, val, torch.device("cpu"), engine, dtype)


def test_two_domain_run_trains_checkpoints_and_resumes(tiny_dataset, small_dataset, tmp_path):
    data = combine_domains([tiny_dataset, small_dataset])
    straight = train_free(_ctx(tmp_path / "a", data), resume=False)
    train_free(_ctx(tmp_path / "b", data), resume=False, stop_after=3)
    resumed = train_free(_ctx(tmp_path / "b", data), resume=True)
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    classes = set(straight.bank.classes())
    assert classes & set(range(10)) or classes & set(range(24, 30))
    assert classes <= set(range(10)) | set(range(24, 30))  # each domain's classes, shifted apart
    test = MetaTestConfig(tasks=4, shots=(1, 5), queries=2, steps=1, engine="reference")
    ctx = _ctx(tmp_path / "a", data)
    summary = final_results(ctx, straight, test, lambda: random_init(lambda: Conv4(5, 4, 32), 0))
    for name, res in summary["results"].items():
        assert res["1"]["tasks"] == 4 and set(res["domains"]) == {"tiny", "small"}
        # meta-val measured 1 shot only (the context's val config): no 5-shot pick to report
        assert all(per.get("5", {"tasks": 2})["tasks"] == 2 for per in res["domains"].values())
        assert ("5" in res) == (not name.startswith("FREE (selected")), name
        # each task's accuracy, for paired comparisons: the same tasks, so the same count, and their mean
        per_task = summary["per_task"][name]
        assert set(per_task) == set(res) - {"domains"}
        assert all(len(per_task[s]) == res[s]["tasks"] for s in per_task)
        assert all(sum(per_task[s]) / len(per_task[s]) == pytest.approx(res[s]["mean"]) for s in per_task)
    table = results_markdown(summary, "cpu", (1, 5), 5)
    assert "| Random | small |" in table and " | - |" in table and "replayed" not in table
    # a run that replayed 1-shot tasks says so under its 5-shot column (the paper runs each setting alone)
    assert "5-shot: the meta-learner replayed 1-shot tasks" in results_markdown(summary, "cpu", (1, 5), 5, 1)
    assert "replayed" not in results_markdown(summary, "cpu", (5,), 5, 5)


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
def test_fast_engine_equals_the_reference_on_two_domains(tiny_dataset, small_dataset, tmp_path, vectorize):
    """Teachers grouped by (architecture, domain size), each group resizing and renormalising alike."""
    data = combine_domains([tiny_dataset, small_dataset])
    ref = train_free(_ctx(tmp_path / "ref", data, torch.float64), resume=False)
    ctx = _ctx(tmp_path / "fast", data, torch.float64, EngineOptions(vectorize=vectorize))
    assert len(ctx.engine.groups.groups) == 2
    fast = train_free(ctx, resume=False)
    for n, p in ref.generator.named_parameters():
        torch.testing.assert_close(dict(fast.generator.named_parameters())[n], p, rtol=1e-9, atol=1e-12, msg=n)
    assert_same_learner(fast.learner, ref.learner, image_size=32)
    assert fast.bank.classes() == ref.bank.classes()


def test_classes_not_of_their_domain_get_ids_past_every_domain(tiny_dataset, small_dataset, tmp_path):
    """An imported pool's own class ids (import-pool without --classes: past its data's ids) would
    otherwise land on the next domain's shifted ids; they get fresh ids past all domains'."""
    from pathlib import Path

    from fastfree.commands.train_domains import domain_teachers
    from fastfree.pool.store import Pool, TeacherRecord

    data = combine_domains([tiny_dataset, small_dataset])
    first_own = 1 + max(max(s.classes) for s in (tiny_dataset.train, tiny_dataset.val, tiny_dataset.test))
    assert first_own == data.offsets[1]  # where import-pool starts tiny's placeholder ids: small's first id

    def pool(dataset, classes, norm):
        size = dataset.image_size
        models = [Conv4(5, 4, size) for _ in classes]
        return Pool(Path("P"), dataset.name, norm, [TeacherRecord(i, "conv4", 4, 5, size, c, None, -1)
                                                    for i, c in enumerate(classes)],
                    [m.state_dict() for m in models], {})

    imported = pool(tiny_dataset, [tuple(range(first_own, first_own + 5))], CIFAR100_NORM)
    given = tuple(small_dataset.train.classes[:5])
    native = pool(small_dataset, [given], IMAGENET_NORM)
    _, classes = domain_teachers([imported, native], data, torch.device("cpu"), torch.float32)
    past = data.offsets[1] + 1 + max(max(s.classes) for s in (small_dataset.train, small_dataset.val, small_dataset.test))
    assert classes[0] == tuple(range(past, past + 5))
    assert classes[1] == tuple(c + data.offsets[1] for c in given)  # a domain's own classes: shifted as before
