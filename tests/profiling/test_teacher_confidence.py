"""teacher_confidence: a pool's teachers on their own held-out images."""

import json
import math

import pytest
import torch

from fastfree.errors import FastFreeError
from fastfree.pool.store import load_pool
from fastfree.profiling import teacher_confidence


def test_stats_of_known_logits():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    s = teacher_confidence.teacher_stats(logits, torch.tensor([1, 1]))
    assert s["heldout_accuracy"] == 0.0  # argmax of a tie is the first class; the second row is wrong
    assert s["mean_max_softmax"] == pytest.approx((0.5 + 1 / (1 + math.exp(-20))) / 2)
    assert s["mean_entropy_nats"] == pytest.approx(math.log(2) / 2, abs=1e-7)
    assert s["heldout_nll"] == pytest.approx((math.log(2) + 20) / 2, abs=1e-6)


def test_recomputes_the_manifest_accuracy_on_the_pools_data(tiny_pool, tmp_path):
    data, _ = tiny_pool
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


def test_refuses_a_pool_of_another_data_set(make_tiny_pool, tmp_path):
    make_tiny_pool(tmp_path / "pool", teachers=1, dataset_name="elsewhere")
    with pytest.raises(FastFreeError, match="trained on 'elsewhere'"):
        teacher_confidence.main(["--data", "builtin", "--pool", str(tmp_path / "pool")])
