"""temper_pool: a pool's teachers scaled to their held-out NLL minimum, predictions unchanged."""

import json

import pytest
import torch

from fastfree.errors import FastFreeError
from fastfree.pool.store import load_pool
from fastfree.profiling import temper_pool


def _nll(beta, logits, labels):
    return torch.nn.functional.cross_entropy(beta * logits.double(), labels).item()


def test_fit_recovers_the_scale_that_generated_the_labels():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial((0.4 * z).softmax(-1), 1, generator=g).squeeze(1)
    beta = temper_pool.fit_logit_scale(z, labels)
    assert beta == pytest.approx(0.4, rel=0.05)
    assert abs(temper_pool.nll_slope(beta, z, labels)) < 1e-9  # the stationary point of a convex NLL
    # there the mean NLL equals the mean entropy: a zero slope is mean(E_p[beta z]) = mean(beta z_label)
    stats = temper_pool.teacher_stats(beta * z, labels)
    assert stats["heldout_nll"] == pytest.approx(stats["mean_entropy_nats"], abs=1e-8)
    for other in (0.8 * beta, 1.25 * beta, 1.0):
        assert _nll(beta, z, labels) < _nll(other, z, labels)


def test_fit_at_the_bracket_ends_and_bad_shapes():
    z = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    assert temper_pool.fit_logit_scale(z, torch.tensor([0, 1])) == 1e3  # always right: sharper is always better
    assert temper_pool.fit_logit_scale(z, torch.tensor([1, 0])) == 1e-3  # always wrong: flatter is always better
    with pytest.raises(FastFreeError, match="logits"):
        temper_pool.fit_logit_scale(z, torch.tensor([0]))


def test_tempered_pool_scales_logits_and_keeps_predictions(tiny_pool, tmp_path):
    data, path = tiny_pool
    source = load_pool(path)
    record = temper_pool.temper_pool(source, data.train, tmp_path / "tempered")
    tempered = load_pool(tmp_path / "tempered")
    assert json.loads((tmp_path / "tempered" / temper_pool.SIDECAR).read_text()) == json.loads(json.dumps(record))
    assert record["source_weights_sha256"] == source.manifest["weights_sha256"] != record["weights_sha256"]
    assert tempered.records == source.records and tempered.manifest["pretrain"] == source.manifest["pretrain"]
    x = source.normalization(data.train.images[:64])
    for i, t in enumerate(record["per_teacher"]):
        with torch.no_grad():
            before, after = source.model(i)(x), tempered.model(i)(x)
        torch.testing.assert_close(after, t["beta"] * before, rtol=1e-5, atol=1e-5)
        assert torch.equal(after.argmax(-1), before.argmax(-1))
        assert t["after"]["heldout_accuracy"] == t["before"]["heldout_accuracy"]
        assert t["after"]["heldout_nll"] <= t["before"]["heldout_nll"] + 1e-12
        logits, labels = temper_pool.heldout_logits(tempered, i, data.train)  # the copy sits at its own optimum
        assert temper_pool.fit_logit_scale(logits, labels) == pytest.approx(1.0, rel=1e-4)


def test_command_writes_the_copy_and_its_json(tiny_pool, tmp_path, capsys):
    _, path = tiny_pool
    out = tmp_path / "t.json"
    assert temper_pool.main(["--data", "builtin", "--images-per-class", "20", "--pool", str(path),
                             "--out", str(tmp_path / "tempered"), "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["per_teacher"] == json.loads((tmp_path / "tempered" / temper_pool.SIDECAR).read_text())["per_teacher"]
    assert "mean beta" in capsys.readouterr().out
    with pytest.raises(FastFreeError, match="trained on"):
        temper_pool.pool_on_data(path, "elsewhere")  # a pool of another data set is refused
