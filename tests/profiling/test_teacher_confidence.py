"""teacher_confidence: a pool's teachers on their own held-out images."""

import json
import math

import pytest
import torch

from fastfree.data.procedural import build_procedural
from fastfree.errors import FastFreeError
from fastfree.pool.pretrain import PretrainConfig, pretrain_pool
from fastfree.pool.store import load_pool, records_from_training, save_pool
from fastfree.pool.teachers import sample_teacher_specs
from fastfree.profiling import teacher_confidence

TINY = PretrainConfig(teachers=2, width=4, epochs=1, batch_size=50)


def test_stats_of_known_logits():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    s = teacher_confidence.teacher_stats(logits, torch.tensor([1, 1]))
    assert s["heldout_accuracy"] == 0.0  # argmax of a tie is the first class; the second row is wrong
    assert s["mean_max_softmax"] == pytest.approx((0.5 + 1 / (1 + math.exp(-20))) / 2)
    assert s["mean_entropy_nats"] == pytest.approx(math.log(2) / 2, abs=1e-7)
    assert s["heldout_nll"] == pytest.approx((math.log(2) + 20) / 2, abs=1e-6)


def test_recomputes_the_manifest_accuracy_on_the_pools_data(tmp_path):
    data = build_procedural(seed=0, images_per_class=20)
    specs = sample_teacher_specs(data.train.classes, TINY.teachers, TINY.ways, seed=0)
    trained = pretrain_pool(data.train, data.normalization, specs, TINY, "reference")
    save_pool(tmp_path / "pool", records_from_training(trained, TINY, data.train.image_size),
              [t.state_dict for t in trained], data.name, data.normalization, TINY.to_dict())
    r = teacher_confidence.pool_confidence(load_pool(tmp_path / "pool"), data.train)
    assert r["teachers"] == 2 and len(r["per_teacher"]) == 2 and r["epochs"] == 1
    assert r["accuracy_vs_manifest_max_abs_diff"] < 1e-6
    m = r["mean"]
    assert 0 <= m["heldout_accuracy"] <= 1 and 0.2 <= m["mean_max_softmax"] <= 1
    assert 0 <= m["mean_entropy_nats"] <= math.log(5) + 1e-9 and m["heldout_nll"] > 0

    out = tmp_path / "c.json"
    assert teacher_confidence.main(["--data", "builtin", "--images-per-class", "20", "--pool", str(tmp_path / "pool"),
                                    "--json", str(out)]) == 0
    assert json.loads(out.read_text())["pools"][0]["mean"] == pytest.approx(m)


def test_refuses_a_pool_of_another_data_set(tmp_path):
    data = build_procedural(seed=0, images_per_class=20)
    specs = sample_teacher_specs(data.train.classes, 1, TINY.ways, seed=0)
    trained = pretrain_pool(data.train, data.normalization, specs, TINY, "reference")
    save_pool(tmp_path / "pool", records_from_training(trained, TINY, data.train.image_size),
              [t.state_dict for t in trained], "elsewhere", data.normalization, TINY.to_dict())
    with pytest.raises(FastFreeError, match="trained on 'elsewhere'"):
        teacher_confidence.main(["--data", "builtin", "--pool", str(tmp_path / "pool")])
