"""A pool used with data it was not trained on is refused with the fix, before any forward."""

from dataclasses import replace
from pathlib import Path

import pytest

from fastfree.cli import main
from fastfree.data.split import IMAGENET_NORM
from fastfree.errors import FastFreeError
from fastfree.pool.fit import check_pool_fits
from fastfree.pool.store import Pool, TeacherRecord


def _pool(dataset, sizes, normalization):
    records = [TeacherRecord(i, "conv4", 8, 5, s, (0, 1, 2, 3, 4), 0.5, i) for i, s in enumerate(sizes)]
    return Pool(Path("P"), dataset.name, normalization, records, [{} for _ in records], {})


def _refusal(pool, dataset) -> str:
    with pytest.raises(FastFreeError) as e:
        check_pool_fits(pool, dataset, "this run", "pass a matching --data", "pass --image-size {size}")
    return str(e.value)


def test_name_size_and_normalisation_are_each_checked(tiny_dataset):
    size = tiny_dataset.image_size
    check_pool_fits(_pool(tiny_dataset, [size, size], tiny_dataset.normalization), tiny_dataset, "x", "", "")
    assert "trained on 'other' but this run uses 'tiny': pass a matching --data" in _refusal(
        replace(_pool(tiny_dataset, [size], tiny_dataset.normalization), dataset="other"), tiny_dataset)
    msg = _refusal(_pool(tiny_dataset, [48, 48], tiny_dataset.normalization), tiny_dataset)
    assert f"teachers of 48 px but this run's images are {size} px: pass --image-size 48" in msg
    assert f"teachers of {size} and 48 px" in _refusal(_pool(tiny_dataset, [size, 48], tiny_dataset.normalization),
                                                       tiny_dataset)
    assert "another normalisation (mean (0.485" in _refusal(_pool(tiny_dataset, [size], IMAGENET_NORM), tiny_dataset)


def test_train_and_eval_refuse_a_pool_of_another_image_size(tmp_path, capsys):
    """Before this check both died in a Linear layer's shape error (a traceback, not a message)."""
    small = ["--images-per-class", "25", "--device", "cpu"]
    pool = str(tmp_path / "p48")
    assert main(["pretrain", "--teachers", "1", "--epochs", "1", "--image-size", "48", "--out", pool, *small]) == 0
    capsys.readouterr()
    train = ["train", "--pool", pool, "--iterations", "2", "--warmup", "1", "--run-dir", str(tmp_path / "r"), *small]
    for argv in (train, ["eval", "--method", "average", "--pool", pool, "--tasks", "2", *small]):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert "holds teachers of 48 px but" in err and "pass --image-size 48 (the pool's)" in err
