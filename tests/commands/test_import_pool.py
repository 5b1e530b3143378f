"""`fastfree import-pool`: a pool pretrained here, exported as model files and imported back, is the
same pool (weights, classes, held-out accuracy); imported pools train and evaluate; misuse names the fix."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fastfree.cli import main
from fastfree.pool.store import WEIGHTS, load_pool

SMALL = ["--images-per-class", "25", "--device", "cpu"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 3-teacher pool pretrained here, and its teachers as one .pt file each plus their classes."""
    root = tmp_path_factory.mktemp("import")
    assert main(["pretrain", "--teachers", "3", "--epochs", "1", "--batch-size", "32", "--width", "8",
                 "--out", str(root / "pool"), *SMALL]) == 0
    pool = load_pool(root / "pool")
    models = root / "models"
    models.mkdir()
    for r, sd in zip(pool.records, pool.state_dicts):
        torch.save(sd, models / f"teacher{r.index}.pt")
    (root / "classes.json").write_text(json.dumps({f"teacher{r.index}.pt": list(r.classes) for r in pool.records}))
    return root, pool


def _import(root, out, *extra):
    return main(["import-pool", str(root / "models"), "--out", str(root / out), *SMALL, *extra])


def test_an_exported_pool_imports_back_as_the_same_pool(exported, capsys):
    root, pool = exported
    assert _import(root, "back", "--classes", str(root / "classes.json"), "--json", str(root / "r.json")) == 0
    back = load_pool(root / "back")
    assert [(r.arch, r.width, r.classes, r.image_size) for r in back.records] == \
        [(r.arch, r.width, r.classes, r.image_size) for r in pool.records]
    # held-out accuracy measured again on the images pretraining held out: the same numbers
    assert [r.heldout_accuracy for r in back.records] == pytest.approx([r.heldout_accuracy for r in pool.records])
    a, b = load_file(str(root / "pool" / WEIGHTS)), load_file(str(root / "back" / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (back.dataset, back.normalization) == (pool.dataset, pool.normalization)
    report = json.loads((root / "r.json").read_text())
    assert report["imported"]["files"] == ["teacher0.pt", "teacher1.pt", "teacher2.pt"]
    assert report["imported"]["layouts"] == ["fastfree"] and len(report["imported"]["sha256"][0]) == 64
    assert "pool of 3 imported conv4 teachers (5-way, width 8, fastfree layout)" in capsys.readouterr().out
    assert report["imported"]["heldout_fraction"] == 0.2
    from fastfree.commands.common import load_on_device
    from fastfree.data.sources import DataConfig
    from fastfree.profiling import teacher_confidence
    data, _ = load_on_device(DataConfig(images_per_class=25), torch.device("cpu"))
    assert teacher_confidence.pool_confidence(back, data.train)["accuracy_vs_manifest_max_abs_diff"] < 1e-6


def test_without_classes_each_model_has_its_own_and_best_model_says_why_not(exported, capsys):
    root, pool = exported
    assert _import(root, "bare") == 0
    bare = load_pool(root / "bare")
    ids = [c for r in bare.records for c in r.classes]
    from fastfree.commands.common import load_on_device
    from fastfree.data.sources import DataConfig
    data, _ = load_on_device(DataConfig(images_per_class=25), torch.device("cpu"))
    data_ids = {c for s in (data.train, data.val, data.test) for c in s.classes}
    assert len(set(ids)) == 15 and min(ids) > max(data_ids)  # past the data's ids (all three splits')
    assert all(r.heldout_accuracy is None for r in bare.records)
    from fastfree.errors import FastFreeError
    from fastfree.profiling import teacher_confidence
    with pytest.raises(FastFreeError, match="imported without --classes"):
        teacher_confidence.pool_confidence(bare, None)
    ev = ["eval", "--pool", str(root / "bare"), "--tasks", "2", *SMALL]
    capsys.readouterr()
    assert main([*ev, "--method", "best-model"]) == 2
    assert "re-import them with --classes" in capsys.readouterr().err
    assert main([*ev, "--method", "average"]) == 0
    # an imported pool trains (2 iterations)
    assert main(["train", "--pool", str(root / "bare"), "--iterations", "2", "--warmup", "1", "--val-tasks", "2",
                 "--test-tasks", "2", "--teachers-per-iteration", "2", "--k", "1", "--run-dir", str(root / "run"),
                 *SMALL]) == 0


def test_import_refusals(exported, capsys):
    root, pool = exported
    assert _import(root, "back2", "--classes", str(root / "classes.json")) == 0
    capsys.readouterr()
    cases = [
        ([], "already holds a pool: pass --overwrite"),
        (["--classes", str(root / "nope.json")], "not a readable JSON file"),
    ]
    (root / "short.json").write_text(json.dumps([[0, 1, 2, 3, 4]]))
    cases.append((["--classes", str(root / "short.json")], "one list of class ids per model (3"))
    good = list(pool.records[0].classes)
    (root / "bad.json").write_text(json.dumps([good, good[:4] + good[:1], good]))
    cases.append((["--classes", str(root / "bad.json")], "teacher1.pt needs 5 distinct integer class ids"))
    (root / "bools.json").write_text(json.dumps([good, good, [True] + good[1:]]))
    cases.append((["--classes", str(root / "bools.json")], "teacher2.pt needs 5 distinct integer class ids"))
    (root / "typo.json").write_text(json.dumps({"teacher0.pt": good, "teacher1.pt": good, "teacher_2.pt": good}))
    cases.append((["--classes", str(root / "typo.json")], "no classes for: teacher2.pt; no such model file: teacher_2.pt"))
    (root / "val.json").write_text(json.dumps([good, good, good[:4] + [1000]]))
    cases.append((["--classes", str(root / "val.json")], "classes [1000] are not classes of the data's meta-train"))
    for extra, message in cases:
        out = "back2" if message.startswith("already") else "other"
        assert _import(root, out, *extra) == 2, message
        assert message in capsys.readouterr().err
    # pretraining cannot grow an imported pool
    assert main(["pretrain", "--teachers", "4", "--epochs", "1", "--batch-size", "32", "--width", "8", "--out",
                 str(root / "back2"), "--resume", *SMALL]) == 2
    assert "was imported (fastfree import-pool)" in capsys.readouterr().err
    # models of different class counts or widths cannot share a pool
    from fastfree.models import build_model
    torch.save(build_model("conv4", 4, 8, 32).state_dict(), root / "models" / "teacher3.pt")
    try:
        assert _import(root, "other") == 2
        assert "different numbers of outputs (teacher0.pt: 5" in capsys.readouterr().err
        torch.save(build_model("conv4", 5, 16, 32).state_dict(), root / "models" / "teacher3.pt")
        assert _import(root, "other") == 2
        assert "different widths" in capsys.readouterr().err
    finally:
        (root / "models" / "teacher3.pt").unlink()
