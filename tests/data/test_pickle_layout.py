"""CIFAR-FS in the MetaOptNet pickle layout: restricted unpickling, validation, real data."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fastfree.data.pickle_layout import SPLIT_FILES, load_cifar_fs, restricted_load
from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError

REAL_CIFAR_FS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar-fs"

# Tiny layout: 3 images per class; classes chosen so each split's ids are not contiguous.
SPLIT_CLASSES = {"train": [0, 3, 5], "val": [1, 4], "test": [2, 6]}
NAMES = ["apple", "bee", "cat", "dog", "eel", "fox", "gnu"]


def _split_dict(classes: list[int], per_class: int = 3, size: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    labels = [c for c in classes for _ in range(per_class)]
    data = rng.integers(0, 256, size=(len(labels), size, size, 3), dtype=np.uint8)
    return {"data": data, "labels": labels}


def _dump(obj: object, path: Path, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _make_cifar_fs(root: Path, with_classes_json: bool = False) -> dict[str, dict]:
    root.mkdir(parents=True, exist_ok=True)
    dicts = {}
    for i, (split, fname) in enumerate(SPLIT_FILES.items()):
        dicts[split] = _split_dict(SPLIT_CLASSES[split], seed=i)
        _dump(dicts[split], root / fname)
    if with_classes_json:
        meta = {
            "fine_label_names": NAMES,
            "splits": {s: [NAMES[c] for c in cs] for s, cs in SPLIT_CLASSES.items()},
        }
        (root / "classes.json").write_text(json.dumps(meta))
    return dicts


class _Evil:
    """Unpickling this would run a shell command (creating a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- round trip


def test_round_trip_chw_values(tmp_path):
    dicts = _make_cifar_fs(tmp_path / "cfs")
    ds = load_cifar_fs(tmp_path / "cfs")
    assert ds.name == "cifar-fs"
    assert ds.normalization == CIFAR100_NORM
    for split in ("train", "val", "test"):
        s = ds.split(split)
        data, labels = dicts[split]["data"], dicts[split]["labels"]
        assert s.name == split
        assert s.images.dtype == torch.uint8 and s.images.is_contiguous()
        assert tuple(s.images.shape) == (len(labels), 3, 32, 32)
        assert s.labels.dtype == torch.int64
        assert s.labels.tolist() == labels
        np.testing.assert_array_equal(s.images.numpy(), data.transpose(0, 3, 1, 2))
        # one explicit element: images[n, c, h, w] == data[n, h, w, c]
        assert int(s.images[1, 2, 5, 7]) == int(data[1, 5, 7, 2])
        assert int(s.images[0, 0, 31, 0]) == int(data[0, 31, 0, 0])
        assert s.classes == SPLIT_CLASSES[split]
        assert s.class_names == {c: f"class-{c}" for c in SPLIT_CLASSES[split]}
        assert set(s.counts().values()) == {3}


def test_class_names_from_classes_json(tmp_path):
    _make_cifar_fs(tmp_path, with_classes_json=True)
    ds = load_cifar_fs(str(tmp_path))
    assert ds.train.class_names == {0: "apple", 3: "dog", 5: "fox"}
    assert ds.val.class_names == {1: "bee", 4: "eel"}
    assert ds.test.class_names == {2: "cat", 6: "gnu"}


def test_classes_json_split_mismatch_is_refused(tmp_path):
    _make_cifar_fs(tmp_path, with_classes_json=True)
    meta = json.loads((tmp_path / "classes.json").read_text())
    meta["splits"]["val"] = ["bee", "cat"]
    (tmp_path / "classes.json").write_text(json.dumps(meta))
    with pytest.raises(FastFreeError, match=r"do not match the 'val' list"):
        load_cifar_fs(tmp_path)


def test_classes_json_too_few_names(tmp_path):
    _make_cifar_fs(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"fine_label_names": NAMES[:3]}))
    with pytest.raises(FastFreeError, match=r"class id 5 .* names only 3 classes"):
        load_cifar_fs(tmp_path)


def test_classes_json_malformed(tmp_path):
    _make_cifar_fs(tmp_path)
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(FastFreeError, match=r"classes.json: cannot parse"):
        load_cifar_fs(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"names": NAMES}))
    with pytest.raises(FastFreeError, match=r"fine_label_names"):
        load_cifar_fs(tmp_path)


def test_overlapping_classes_between_pickles(tmp_path):
    _make_cifar_fs(tmp_path)
    _dump(_split_dict([0, 1]), tmp_path / SPLIT_FILES["test"])
    with pytest.raises(FastFreeError, match=r"disjoint classes"):
        load_cifar_fs(tmp_path)


def test_label_variants_load(tmp_path):
    d = _split_dict([2, 7])
    # numpy integer scalars in the list (numpy's `scalar` global) and an int array
    _dump({"data": d["data"], "labels": [np.int64(v) for v in d["labels"]]}, tmp_path / "a.pickle")
    _dump({"data": d["data"], "labels": np.asarray(d["labels"], dtype=np.int32)}, tmp_path / "b.pickle")
    for name in ("a.pickle", "b.pickle"):
        obj = restricted_load(tmp_path / name)
        assert [int(v) for v in obj["labels"]] == d["labels"]
        np.testing.assert_array_equal(obj["data"], d["data"])


def test_numpy1_global_names_load(tmp_path):
    """Pickles written by numpy 1.x name numpy.core.multiarray._reconstruct."""
    d = _split_dict([1])
    raw = pickle.dumps(d, protocol=4)
    new, old = b"numpy._core.multiarray", b"numpy.core.multiarray"
    if new not in raw:  # running on numpy 1: the pickle already uses the old names
        assert old in raw
        patched = raw
    else:
        assert raw[2] == 0x95 and struct.unpack("<Q", raw[3:11])[0] == len(raw) - 11  # one frame
        body = raw[11:].replace(bytes([0x8C, len(new)]) + new, bytes([0x8C, len(old)]) + old)
        patched = raw[:2] + b"\x95" + struct.pack("<Q", len(body)) + body
        assert new not in patched
    (tmp_path / "old.pickle").write_bytes(patched)
    obj = restricted_load(tmp_path / "old.pickle")
    np.testing.assert_array_equal(obj["data"], d["data"])


def test_other_image_size(tmp_path):
    for fname, classes in zip(SPLIT_FILES.values(), SPLIT_CLASSES.values()):
        _dump(_split_dict(classes, size=20), tmp_path / fname)
    ds = load_cifar_fs(tmp_path)
    assert ds.image_size == 20 and tuple(ds.val.images.shape[1:]) == (3, 20, 20)


@pytest.mark.parametrize("protocol", [2, 5])
def test_other_protocols_get_a_resave_hint(tmp_path, protocol):
    """Python 3 protocol <= 2 pickles bytes via _codecs.encode; numpy uses _frombuffer for
    protocol 5. Both are outside the allow-list: the message says to re-save with protocol 4."""
    _dump(_split_dict([0]), tmp_path / "p.pickle", protocol=protocol)
    with pytest.raises(FastFreeError, match=r"refused .*re-save it with pickle.dump\(obj, f, protocol=4\)"):
        restricted_load(tmp_path / "p.pickle")


# ----------------------------------------------------------------------------- refused pickles


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _dump(_Evil(marker), tmp_path / "evil.pickle")
    assert b"system" in path.read_bytes()
    with pytest.raises(FastFreeError, match=r"(posix|os)\.system") as info:
        restricted_load(path)
    msg = str(info.value)
    assert "not a plain data pickle" in msg and "re-export" in msg
    assert not marker.exists()


def test_malicious_payload_inside_valid_dict_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    d = _split_dict([0])
    d["labels"] = [_Evil(marker)] * len(d["labels"])
    _dump(d, tmp_path / "evil.pickle")
    with pytest.raises(FastFreeError, match=r"(posix|os)\.system"):
        restricted_load(tmp_path / "evil.pickle")
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, refused",
    [
        (eval, "builtins.eval"),
        ({"data": __import__("collections").OrderedDict()}, "collections.OrderedDict"),
        ({"x": torch.zeros(2)}, "torch"),
    ],
)
def test_other_globals_are_refused(tmp_path, obj, refused):
    _dump(obj, tmp_path / "x.pickle")
    with pytest.raises(FastFreeError, match=rf"refused to load the global {refused}"):
        restricted_load(tmp_path / "x.pickle")


def test_whole_dataset_with_malicious_split_is_refused(tmp_path):
    _make_cifar_fs(tmp_path)
    marker = tmp_path / "pwned"
    _dump(_Evil(marker), tmp_path / SPLIT_FILES["val"])
    with pytest.raises(FastFreeError, match=r"CIFAR_FS_val.pickle: refused .*system"):
        load_cifar_fs(tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- corrupt / wrong


def test_truncated_pickle(tmp_path):
    raw = pickle.dumps(_split_dict([0]), protocol=4)
    (tmp_path / "t.pickle").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FastFreeError, match=r"t.pickle: (truncated or corrupt|cannot rebuild)"):
        restricted_load(tmp_path / "t.pickle")


def test_garbage_file(tmp_path):
    (tmp_path / "g.pickle").write_bytes(b"this is not a pickle at all\n")
    with pytest.raises(FastFreeError, match=r"g.pickle: (truncated or corrupt|cannot rebuild)"):
        restricted_load(tmp_path / "g.pickle")
    (tmp_path / "e.pickle").write_bytes(b"")
    with pytest.raises(FastFreeError, match=r"e.pickle: truncated or corrupt"):
        restricted_load(tmp_path / "e.pickle")


def _bad(**changes) -> dict:
    d = _split_dict([0, 1])
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "obj, match",
    [
        ([1, 2, 3], r"expected a dict, got list"),
        ({"data": np.zeros((2, 32, 32, 3), np.uint8)}, r"lacks key\(s\) \['labels'\]"),
        (_bad(data=[[1, 2]]), r"'data' is a list, not a numpy array"),
        (_bad(data=np.zeros((6, 32, 32, 3), np.float32)), r"dtype float32, expected uint8"),
        (_bad(data=np.zeros((6, 32, 32), np.uint8)), r"shape \(6, 32, 32\), expected \[N, H, W, 3\]"),
        (_bad(data=np.zeros((6, 3, 32, 32), np.uint8)), r"expected \[N, H, W, 3\]"),
        (_bad(labels=[0, 1]), r"6 images but 2 labels"),
        (_bad(labels=["a"] * 6), r"'labels'\[0\] is 'a' \(str\), not an int"),
        (_bad(labels=[True] * 6), r"'labels'\[0\] is True"),
        (_bad(labels=np.zeros(6, np.float32)), r"float32 array .* expected 1-D integers"),
        (_bad(labels="abcdef"), r"'labels' is a str, not a list of ints"),
        ({"data": np.zeros((0, 32, 32, 3), np.uint8), "labels": []}, r"holds no images"),
    ],
)
def test_wrong_structure(tmp_path, obj, match):
    _dump(obj, tmp_path / "w.pickle")
    with pytest.raises(FastFreeError, match=match):
        restricted_load(tmp_path / "w.pickle")
    assert restricted_load(tmp_path / "w.pickle", validate=False) is not None


def test_negative_label(tmp_path):
    _make_cifar_fs(tmp_path)
    _dump(_bad(labels=[-1] * 6), tmp_path / SPLIT_FILES["test"])
    with pytest.raises(FastFreeError, match=r"negative class id -1"):
        load_cifar_fs(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FastFreeError, match=r"nope.pickle: file not found; a CIFAR-FS folder must contain"):
        restricted_load(tmp_path / "nope.pickle")
    _make_cifar_fs(tmp_path)
    (tmp_path / SPLIT_FILES["test"]).unlink()
    with pytest.raises(FastFreeError, match=r"missing CIFAR_FS_test.pickle; a CIFAR-FS folder must contain"):
        load_cifar_fs(tmp_path)


def test_parent_folder_names_the_data_set_inside(tmp_path):
    """--data-root data/ instead of data/cifar-fs/: the error names the folder to pass."""
    _make_cifar_fs(tmp_path / "cifar-fs")
    (tmp_path / "other").mkdir()
    with pytest.raises(FastFreeError, match=r"must contain .*; .*cifar-fs has them: pass that folder"):
        load_cifar_fs(tmp_path)
    (tmp_path / "cifar-fs" / SPLIT_FILES["val"]).unlink()  # an incomplete copy is not offered
    with pytest.raises(FastFreeError, match=r"with the class names\)$"):
        load_cifar_fs(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(FastFreeError, match=r"CIFAR-FS folder .*absent does not exist"):
        load_cifar_fs(tmp_path / "absent")


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_cifar_fs():
    if not all((REAL_CIFAR_FS / f).is_file() for f in SPLIT_FILES.values()):
        pytest.skip(f"real CIFAR-FS not found at {REAL_CIFAR_FS}")
    return load_cifar_fs(REAL_CIFAR_FS)


def test_real_cifar_fs(real_cifar_fs):
    ds = real_cifar_fs
    meta = json.loads((REAL_CIFAR_FS / "classes.json").read_text())
    names = meta["fine_label_names"]
    assert len(names) == 100 and names[0] == "apple" and names[99] == "worm"
    expected = {"train": 64, "val": 16, "test": 20}
    all_ids: set[int] = set()
    for split, n_classes in expected.items():
        s = ds.split(split)
        assert len(s.classes) == n_classes
        assert set(s.counts().values()) == {600}
        assert tuple(s.images.shape) == (600 * n_classes, 3, 32, 32)
        assert s.images.dtype == torch.uint8 and s.images.is_contiguous()
        assert s.labels.dtype == torch.int64
        assert sorted(s.class_names.values()) == sorted(meta["splits"][split])
        assert all(names[c] == s.class_names[c] for c in s.classes)
        all_ids |= set(s.classes)
    assert all_ids == set(range(100))
    assert ds.train.class_names[0] == "apple"
    apple_split = next(s for s, cs in meta["splits"].items() if "apple" in cs)
    assert 0 in ds.split(apple_split).classes


def test_real_cifar_fs_chw_matches_pickle(real_cifar_fs):
    raw = restricted_load(REAL_CIFAR_FS / SPLIT_FILES["val"])
    idx = np.array([0, 1, 4799, 9599])
    np.testing.assert_array_equal(
        real_cifar_fs.val.images[torch.from_numpy(idx)].numpy(), raw["data"][idx].transpose(0, 3, 1, 2)
    )
    assert real_cifar_fs.val.labels.tolist() == list(raw["labels"])


def test_corrupt_bytes_give_a_clear_error(tmp_path):
    """Single damaged bytes made pickle or numpy raise OverflowError / SystemError, which escaped as
    tracebacks (found by fuzzing); every failure to rebuild the data is a FastFreeError."""
    raw = bytearray(pickle.dumps(_split_dict([0]), protocol=4))
    raw[10] = 0xFF  # the frame length: OverflowError inside the unpickler
    (tmp_path / "f.pickle").write_bytes(bytes(raw))
    with pytest.raises(FastFreeError, match=r"f.pickle: (truncated or corrupt|cannot rebuild)"):
        restricted_load(tmp_path / "f.pickle")


def test_non_square_images_are_refused(tmp_path):
    rect = {**_split_dict([0]), "data": np.zeros((3, 32, 28, 3), dtype=np.uint8)}
    with pytest.raises(FastFreeError, match="images are 32x28 .H x W., not square"):
        restricted_load(_dump(rect, tmp_path / "r.pickle"))
