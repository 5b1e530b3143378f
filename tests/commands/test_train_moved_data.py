"""`train --resume` after the run's data moved: accepted when the data found at the new folder is the
data the run started with (data.json's digests), refused when it is other data or cannot be checked."""

import json
import pickle
import shutil

import numpy as np
import pytest

from fastfree.cli import main
from fastfree.commands.run_data_record import moved_roots
from fastfree.errors import FastFreeError
from tests.commands.small_run import TRAIN

SPLITS = {"train": range(0, 6), "val": range(6, 9), "test": range(9, 12)}


def _cifar_fs(root, seed=0):
    """A CIFAR-FS layout of 12 classes x 25 images (3-way tasks: 5 shots + 15 queries per class fit)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, classes in SPLITS.items():
        labels = [c for c in classes for _ in range(25)]
        data = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
        (root / f"CIFAR_FS_{split}.pickle").write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=4))
    return root


def _train(run_dir, root, iterations, *extra):
    return main(["train", "--data", "cifar-fs", "--data-root", str(root), "--pool", str(run_dir.parent / "pool"),
                 "--run-dir", str(run_dir), *TRAIN, "--iterations", str(iterations), *extra])


@pytest.mark.slow  # five small train calls and a pool
def test_a_run_resumes_on_its_data_moved_and_refuses_other_data(tmp_path, capsys):
    first = _cifar_fs(tmp_path / "first")
    assert main(["pretrain", "--data", "cifar-fs", "--data-root", str(first), "--teachers", "2", "--ways", "3",
                 "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "pool"), "--device", "cpu"]) == 0
    run = tmp_path / "run"
    assert _train(run, first, 2) == 0
    assert len(json.loads((run / "data.json").read_text())["sha256"]) == 1
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    assert _train(run, moved, 3, "--resume") == 0  # lengthened, on the same data at its new folder
    assert "the run's data moved" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["data"]["root"] == str(moved)
    other = _cifar_fs(tmp_path / "other", seed=1)
    assert _train(run, other, 4, "--resume") == 2
    assert "is not the data" in capsys.readouterr().err and not (run / "results-3it.json").exists()
    (run / "data.json").unlink()  # a run from before data.json: a move cannot be checked
    assert _train(run, other, 4, "--resume") == 2
    assert "predates it" in capsys.readouterr().err
    assert _train(run, moved, 4, "--resume") == 0  # in place, it records its data now
    assert (run / "data.json").is_file()


def test_only_a_folder_given_anew_is_a_move():
    stored = {"data": {"source": "cifar-fs", "root": "/a", "image_size": 32}}
    assert moved_roots(stored, {"data": {"source": "cifar-fs", "root": "/b", "image_size": 32}}) == [("/a", "/b")]
    assert moved_roots(stored, {"data": {"source": "cifar-fs", "root": None, "image_size": 32}}) == []  # dropped
    assert moved_roots(stored, {"data": {"source": "cifar-fs", "root": "/b", "image_size": 40}}) == []  # other data
    folder = {"data": {"source": "folder", "root": "/d/mini_a"}}  # named after its folder: renamed, refused
    assert moved_roots(folder, {"data": {"source": "folder", "root": "/e/mini_a"}}) == [("/d/mini_a", "/e/mini_a")]
    with pytest.raises(FastFreeError, match=r"named after its folder \(mini_a\).*e.g. /d/mini_a"):
        moved_roots(folder, {"data": {"source": "folder", "root": "/d/mini_b"}})
    two = {"domains": [{"source": "cifar-fs", "root": "/a"}, {"source": "builtin", "root": None}]}
    assert moved_roots(two, {"domains": [{"source": "cifar-fs", "root": "/c"}, {"source": "builtin", "root": None}]}) \
        == [("/a", "/c")]


def test_other_data_in_place_is_refused_with_the_way_out(tmp_path):
    from fastfree.commands.run_data_record import check_same_data, record_data
    from fastfree.data.procedural import build_procedural

    record_data(tmp_path, build_procedural(0, 25, 32))
    check_same_data(tmp_path, build_procedural(0, 25, 32), [])  # the same data: nothing to say
    with pytest.raises(FastFreeError, match=r"the data found now is not the data .* delete .*data.json to accept it"):
        check_same_data(tmp_path, build_procedural(1, 25, 32), [])
    with pytest.raises(FastFreeError, match=r"the data at the new folder \(/a -> /b\) is not the data") as e:
        check_same_data(tmp_path, build_procedural(1, 25, 32), [("/a", "/b")])
    assert "delete" not in str(e.value)
