"""pool_cka: linear CKA between teachers' features (Appendix F)."""

import json

import pytest
import torch

from fastfree.errors import FastFreeError
from fastfree.models.conv4 import Conv4
from fastfree.models.resnet import resnet10
from fastfree.pool.store import load_pool
from fastfree.profiling import pool_cka


def gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s definition, independently: HSIC of centred n x n Gram matrices, normalised."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return ((k * l_).sum() / ((k * k).sum() * (l_ * l_).sum()).sqrt()).item()


def test_equals_the_gram_definition_for_different_widths():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 6, generator=g, dtype=torch.float64)
    feats = [base @ torch.randn(6, d, generator=g, dtype=torch.float64) + 0.5 * torch.randn(40, d, generator=g,
             dtype=torch.float64) + 3.0 for d in (3, 8, 17)]
    cka = pool_cka.linear_cka(feats)
    assert cka.dtype == torch.float64 and cka.shape == (3, 3)
    assert torch.equal(cka, cka.T) and torch.allclose(cka.diagonal(), torch.ones(3, dtype=torch.float64))
    for i in range(3):
        for j in range(3):
            assert cka[i, j].item() == pytest.approx(gram_cka(feats[i], feats[j]), rel=1e-12)
    assert 0 < cka.min() and cka.max() <= 1 + 1e-12


def test_invariant_to_rotation_scale_and_shift_but_not_to_any_linear_map():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    assert pool_cka.linear_cka([x, 7.0 * x @ q - 2.0])[0, 1].item() == pytest.approx(1.0, abs=1e-12)
    stretch = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 30.0], dtype=torch.float64))
    assert pool_cka.linear_cka([x, x @ stretch])[0, 1].item() < 0.9


def test_unrelated_features_score_low():
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randn(2000, 4, generator=g) for _ in range(2))
    assert pool_cka.linear_cka([a, b])[0, 1].item() < 0.02  # about d / n for independent features


def test_refuses_constant_features_and_mismatched_inputs():
    with pytest.raises(FastFreeError, match=r"representation\(s\) \[1\] are the same for every input"):
        pool_cka.linear_cka([torch.randn(10, 3), torch.ones(10, 4)])
    with pytest.raises(FastFreeError, match="same n inputs"):
        pool_cka.linear_cka([torch.randn(10, 3), torch.randn(9, 3)])


@pytest.mark.parametrize("model", [Conv4(width=4), resnet10(width=4)], ids=["conv4", "resnet10"])
def test_features_are_what_the_classifier_reads(model):
    model.eval()
    x = torch.randn(7, 3, 32, 32)
    feats = pool_cka.classifier_inputs(model, x, batch=3)
    assert feats.shape == (7, model.classifier.in_features)
    torch.testing.assert_close(model.classifier(feats), model(x))
    assert not model.classifier._forward_pre_hooks  # the hook is gone


def test_summary_groups_pairs():
    teachers = [{"pool": 0, "arch": "conv4", "classes": [0, 1], "seed": 3},
                {"pool": 0, "arch": "conv4", "classes": [1, 2], "seed": 4},
                {"pool": 1, "arch": "resnet10", "classes": [0, 1], "seed": 3}]
    cka = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]], dtype=torch.float64)
    s = pool_cka.summarize(cka, teachers)
    assert s["mean_off_diagonal"] == {"pairs": 3, "mean": pytest.approx(1.1 / 3)}
    assert s["by_architecture_pair"] == {"conv4 / conv4": {"pairs": 1, "mean": 0.5},
                                         "conv4 / resnet10": {"pairs": 2, "mean": pytest.approx(0.3)}}
    assert s["by_shared_classes"] == {"conv4": {"1": {"pairs": 1, "mean": 0.5}}}
    assert s["by_pool_pair"] == {"0 / 0": {"pairs": 1, "mean": 0.5}, "0 / 1": {"pairs": 2, "mean": pytest.approx(0.3)}}
    assert s["same_recipe_across_pools"] == {"pairs": 0, "mean": None}  # the architectures differ
    teachers[2]["arch"] = "conv4"
    s = pool_cka.summarize(cka, teachers)
    assert s["same_recipe_across_pools"] == {"pairs": 1, "mean": 0.2}
    assert s["by_shared_classes"] == {"conv4": {"1": {"pairs": 1, "mean": 0.5}}}  # pairs within one pool only


def test_a_pool_end_to_end(make_tiny_pool, tmp_path):
    make_tiny_pool(tmp_path / "pool", teachers=3)
    out, png = tmp_path / "cka.json", tmp_path / "cka.png"
    assert pool_cka.main(["--data", "builtin", "--images-per-class", "20", "--pool", str(tmp_path / "pool"),
                          "--split", "test", "--images", "60", "--json", str(out), "--png", str(png)]) == 0
    r = json.loads(out.read_text())
    assert r["split"] == "builtin/test" and r["images"] == 60 and len(r["teachers"]) == 3
    assert r["pools"] == [str(tmp_path / "pool")]
    assert [t["classes"] for t in r["teachers"]] == [list(t.classes) for t in load_pool(tmp_path / "pool").records]
    cka = torch.tensor(r["cka"])
    assert cka.shape == (3, 3) and torch.allclose(cka.diagonal(), torch.ones(3))
    assert r["summary"]["mean_off_diagonal"]["pairs"] == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_images_give_the_same_matrix_and_a_pool_of_another_data_set_is_refused(make_tiny_pool, tmp_path):
    data = make_tiny_pool(tmp_path / "pool", teachers=2)
    pool = load_pool(tmp_path / "pool")
    a = pool_cka.pools_cka([pool], data.val, 30, seed=5)
    assert a == pool_cka.pools_cka([pool], data.val, 30, seed=5)
    assert a["cka"] != pool_cka.pools_cka([pool], data.val, 30, seed=6)["cka"]
    with pytest.raises(FastFreeError, match="--images 1: .* pass --images between 2 and"):
        pool_cka.pools_cka([pool], data.val, 1, seed=5)
    make_tiny_pool(tmp_path / "one", teachers=1)
    with pytest.raises(FastFreeError, match="holds one: pass a pool of at least 2 teachers, or several --pool"):
        pool_cka.pools_cka([load_pool(tmp_path / "one")], data.val, 30, seed=5)
    assert len(pool_cka.pools_cka([load_pool(tmp_path / "one")] * 2, data.val, 30, seed=5)["teachers"]) == 2
    make_tiny_pool(tmp_path / "other", teachers=1, dataset_name="elsewhere")
    with pytest.raises(FastFreeError, match="trained on 'elsewhere'"):
        pool_cka.main(["--data", "builtin", "--images-per-class", "20", "--pool", str(tmp_path / "other")])


def test_untrained_twins_are_the_teachers_architectures_freshly_initialised(make_tiny_pool, tmp_path):
    data = make_tiny_pool(tmp_path / "pool", teachers=2)
    pool = load_pool(tmp_path / "pool")
    state = torch.random.get_rng_state()
    twin = pool_cka.untrained_twin(pool, 1, torch.device("cpu"), seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is not touched
    assert not twin.training and twin.state_dict().keys() == pool.state_dicts[1].keys()
    again = pool_cka.untrained_twin(pool, 1, torch.device("cpu"), seed=1).state_dict()
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), again.values()))
    assert not torch.equal(twin.state_dict()["classifier.weight"], pool.state_dicts[1]["classifier.weight"])
    trained = pool_cka.pools_cka([pool], data.test, 40, seed=0)
    fresh = pool_cka.pools_cka([pool], data.test, 40, seed=0, untrained=True)
    assert fresh["untrained"] and not trained["untrained"]
    assert [t["features"] for t in fresh["teachers"]] == [t["features"] for t in trained["teachers"]]
    assert fresh["cka"] != trained["cka"]
    twice = pool_cka.pools_cka([pool, pool], data.test, 40, seed=0, untrained=True)
    assert twice["summary"]["same_recipe_across_pools"]["mean"] < 0.999  # one teacher's twins in two pools differ
    assert pool_cka.pools_cka([pool, pool], data.test, 40, seed=0)["summary"]["same_recipe_across_pools"]["mean"] == \
        pytest.approx(1.0)


def test_within_pool_change_matches_recipes_and_its_jackknife():
    recipes = [("conv4", [k, k + 1], k) for k in range(4)]
    first = [{"pool": 0, "arch": a, "classes": c, "seed": sd} for a, c, sd in recipes]
    later = [{"pool": 1, "arch": a, "classes": c, "seed": sd} for a, c, sd in reversed(recipes)]  # listed backwards
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 4, generator=g, dtype=torch.float64)
    base = (base + base.T) / 2
    base.fill_diagonal_(1.0)
    shift = torch.full((4, 4), -0.1, dtype=torch.float64)
    shift[0, 1] = shift[1, 0] = +0.2  # one pair of recipes rose
    flip = torch.arange(3, -1, -1)
    cka = torch.eye(8, dtype=torch.float64)
    cka[:4, :4] = base
    cka[4:, 4:] = (base + shift)[flip][:, flip]  # pool 1's teachers in its own (reversed) order
    change = pool_cka.summarize(cka, first + later)["within_pool_change"]["1 - 0"]
    assert change["recipes"] == 4 and change["pairs"] == 6
    assert change["mean"] == pytest.approx((5 * -0.1 + 0.2) / 6)
    assert change["share_lower"] == pytest.approx(5 / 6)
    # the jackknife by hand: leaving out recipe 0 or 1 leaves 3 pairs at -0.1; recipe 2 or 3, 3 pairs with the +0.2
    loo = torch.tensor([-0.1, -0.1, 0.0, 0.0], dtype=torch.float64)
    assert change["jackknife_se"] == pytest.approx((0.75 * (loo - loo.mean()).square().sum()).sqrt().item())
    too_few = pool_cka.summarize(cka[:6, :6], first + later[:2])["within_pool_change"]["1 - 0"]
    assert too_few == {"recipes": 2, "mean": None}


def test_a_missing_matplotlib_is_refused_before_any_work(monkeypatch, tmp_path):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    # the pool does not exist: a refusal about matplotlib, not about the pool, shows it came first
    with pytest.raises(FastFreeError, match=r'--png needs matplotlib .*pip install -e "\.\[figures\]"'):
        pool_cka.main(["--data", "builtin", "--pool", str(tmp_path / "none"), "--png", str(tmp_path / "x.png")])
