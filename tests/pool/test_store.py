import json

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.models import Conv4
from fastfree.pool.store import MANIFEST, WEIGHTS, TeacherRecord, _manifest_digest, load_pool, save_pool


def _pool(tmp_path, n=3):
    torch.manual_seed(0)
    models = [Conv4(num_classes=5) for _ in range(n)]
    records = [TeacherRecord(i, "conv4", 32, 5, 32, (i, i + 1, i + 2, i + 3, i + 4), 0.5 + i / 10, i) for i in range(n)]
    path = save_pool(tmp_path / "pool", records, [m.state_dict() for m in models], "tiny", CIFAR100_NORM, {"epochs": 1})
    return path, models, records


def test_round_trip(tmp_path):
    path, models, records = _pool(tmp_path)
    pool = load_pool(path)
    assert pool.records == records and pool.dataset == "tiny" and pool.normalization == CIFAR100_NORM
    x = torch.randn(4, 3, 32, 32)
    for m, loaded in zip(models, pool.models()):
        torch.testing.assert_close(loaded(x), m.eval()(x), rtol=0, atol=0)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["fastfree_version"] and manifest["pretrain"] == {"epochs": 1}
    assert not list(path.glob("*.tmp"))


def _rewrite_manifest(path, edit, keep_checksum=False):
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    if keep_checksum:
        manifest["manifest_sha256"] = _manifest_digest(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FastFreeError, match="no such directory.*fastfree pretrain"):
        load_pool(tmp_path / "nope")
    path, _, _ = _pool(tmp_path)
    (path / WEIGHTS).unlink()
    with pytest.raises(FastFreeError, match="weights.safetensors is missing"):
        load_pool(path)
    (path / MANIFEST).unlink()
    with pytest.raises(FastFreeError, match="manifest.json is missing"):
        load_pool(path)


def test_tampered_manifest_is_detected(tmp_path):
    path, _, _ = _pool(tmp_path)
    _rewrite_manifest(path, lambda m: m["teachers"][0].update(heldout_accuracy=0.99))
    with pytest.raises(FastFreeError, match="modified after it was written"):
        load_pool(path)


def test_mismatched_architecture(tmp_path):
    path, _, _ = _pool(tmp_path)
    _rewrite_manifest(path, lambda m: m["teachers"][1].update(width=64), keep_checksum=True)
    with pytest.raises(FastFreeError, match="teacher 1's weights do not fit a conv4 \\(width 64"):
        load_pool(path)
    _rewrite_manifest(path, lambda m: m["teachers"][1].update(width=32, arch="resnet18"), keep_checksum=True)
    with pytest.raises(FastFreeError, match="do not fit a resnet18"):
        load_pool(path)
    _rewrite_manifest(path, lambda m: m["teachers"][1].update(arch="vgg"), keep_checksum=True)
    with pytest.raises(FastFreeError, match="unknown architecture 'vgg'"):
        load_pool(path)


def test_mismatched_class_count(tmp_path):
    path, _, _ = _pool(tmp_path)
    _rewrite_manifest(path, lambda m: m["teachers"][2].update(classes=[1, 2, 3]), keep_checksum=True)
    with pytest.raises(FastFreeError, match="5 outputs but 3 class ids"):
        load_pool(path)
    _rewrite_manifest(path, lambda m: m["teachers"][2].update(classes=[1, 2, 3, 4, 5, 6], num_classes=6),
                      keep_checksum=True)
    with pytest.raises(FastFreeError, match="6 classes"):
        load_pool(path)


def test_replaced_weights_and_garbage(tmp_path):
    path, _, _ = _pool(tmp_path)
    other, _, _ = _pool(tmp_path / "other", n=2)
    (path / WEIGHTS).write_bytes((other / WEIGHTS).read_bytes())
    with pytest.raises(FastFreeError, match="does not match the manifest"):
        load_pool(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(FastFreeError, match="not valid JSON"):
        load_pool(path)
    (path / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FastFreeError, match="not a fastfree pool manifest"):
        load_pool(path)
