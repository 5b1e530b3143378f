"""`fastfree train` with two domains (Table 3's setting, CPU-sized): pools of two image sizes."""

import json

import pytest

from fastfree.cli import main
from tests.test_cli import SMALL, TINY_FREE

DOMAINS = ["--domain", "builtin", "--domain", "builtin,size=48"]


def _pool(out, *extra):
    assert main(["pretrain", "--teachers", "2", "--epochs", "1", "--batch-size", "32", "--out", str(out),
                 "--device", "cpu", *SMALL, *extra]) == 0
    return str(out)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    return _pool(root / "p32"), _pool(root / "p48", "--image-size", "48"), root


def test_two_domain_run_trains_checkpoints_and_reports_per_domain(pools, tmp_path):
    p32, p48, _ = pools
    run_dir, out = tmp_path / "run", tmp_path / "r.json"
    args = ["train", *DOMAINS, "--pool", p32, "--pool", p48, "--run-dir", str(run_dir), *TINY_FREE, *SMALL,
            "--test-tasks", "4", "--k", "1", "--eval-every", "3"]  # CPU time: one FIVE step, one meta-val
    assert main([*args, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [d["image_size"] for d in r["config"]["domains"]] == [32, 48]
    for res in r["results"].values():
        assert res["1"]["tasks"] == 4 and {k: v["1"]["tasks"] for k, v in res["domains"].items()} == \
            {"builtin-1": 2, "builtin-2": 2}
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[-1]["val_domains"]) == {"builtin-1", "builtin-2"}
    assert "| Random | builtin-2 |" in (run_dir / "results.md").read_text()
    assert (run_dir / "checkpoint.pt").is_file()  # resume itself: tests/free/test_domains.py (train_free)
    # `eval --run` re-creates the run's two domains and input space: the same numbers per domain
    again = tmp_path / "e.json"
    assert main(["eval", "--run", str(run_dir), "--method", "learner", "--learner", "last", "--tasks", "4",
                 "--device", "cpu", "--json", str(again)]) == 0
    e = json.loads(again.read_text())
    assert {d: {str(x["shots"]): pytest.approx(x["mean"]) for x in rs} for d, rs in e["domains"].items()} == \
        {d: {s: v["mean"] for s, v in t.items()} for d, t in r["results"]["FREE (last)"]["domains"].items()}


def test_multi_domain_errors_name_the_fix(pools, tmp_path, capsys):
    p32, p48, root = pools
    base = ["train", "--run-dir", str(tmp_path / "x"), *TINY_FREE, *SMALL]
    cases = [
        ([*DOMAINS, "--pool", p32], "1 --pool for 2 domains"),
        ([*DOMAINS, "--pool", p48, "--pool", p32], "set the domain's size"),
        ([*DOMAINS, "--pool", p32, "--pool", _pool(root / "w4", "--ways", "4", "--image-size", "48")],
         "different numbers of classes"),
        ([*DOMAINS, "--data-root", "/x"], "--data-root sets one data set"),
        (["--domain", "builtin", "--domain", "cifar-fs"], "--domain cifar-fs:PATH"),
        (["--pool", p32, "--pool", p48], "needs one --domain per pool"),
        # one --domain was dropped silently (the preset's data trained instead); so was --data-root on built-in data
        (["--domain", "cifar-fs:/x", "--pool", p32], "one --domain (cifar-fs:/x): --domain is for two or more"),
        (["--data-root", "/x", "--pool", p32], "the built-in data has none: add --data cifar-fs"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, message
        assert message in capsys.readouterr().err


def test_one_data_set_commands_ask_which_domain_of_a_multi_domain_preset(capsys):
    assert main(["eval", "--preset", "demo-multidomain", "--method", "random", "--tasks", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "preset demo-multidomain has 2 domains (builtin, builtin)" in err and "--data builtin" in err
    assert main(["eval", "--preset", "demo-multidomain", "--data", "builtin", "--method", "random", "--tasks", "2",
                 "--steps", "1", "--images-per-class", "20", "--device", "cpu"]) == 0
