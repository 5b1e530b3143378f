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
    # a run directory or a pool's file given as the pool: named as what it is, not "re-create it"
    run = tmp_path / "run"
    (run / "pool").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(FastFreeError, match=r"is a run directory \(fastfree train\), not a pool.*Its own pool"):
        load_pool(run)
    path, _, _ = _pool(tmp_path / "again")
    with pytest.raises(FastFreeError, match=r"is a file, not a pool directory.*\(the pool is "):
        load_pool(path / MANIFEST)


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


def test_a_save_killed_between_its_renames_is_finished_on_load(tmp_path, monkeypatch):
    """Overwriting a pool renames the weights, then the manifest: killed in between, the new weights
    sat beside the old manifest and neither pool loaded. load_pool now completes the save."""
    path, _, _ = _pool(tmp_path, n=2)
    import fastfree.pool.store as store

    real, calls = store.os.replace, []

    def killed_after_the_weights(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies before the manifest's rename
        real(src, dst)

    torch.manual_seed(1)
    models = [Conv4(num_classes=5) for _ in range(3)]
    records = [TeacherRecord(i, "conv4", 32, 5, 32, (0, 1, 2, 3, 4), 0.5, i) for i in range(3)]
    monkeypatch.setattr(store.os, "replace", killed_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        save_pool(path, records, [m.state_dict() for m in models], "tiny", CIFAR100_NORM)
    monkeypatch.setattr(store.os, "replace", real)
    assert (path / (MANIFEST + ".tmp")).is_file()
    pool = load_pool(path)  # the new pool, whole
    assert pool.records == records and not list(path.glob("*.tmp"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(pool.models()[2](x), models[2].eval()(x), rtol=0, atol=0)


def test_a_save_that_fails_while_writing_leaves_the_pool_in_place(tmp_path, monkeypatch):
    path, _, records = _pool(tmp_path, n=2)
    import fastfree.pool.store as store

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "sha256_file", disk_full)  # after the weights' temporary file is written
    with pytest.raises(OSError):
        save_pool(path, records + [TeacherRecord(2, "conv4", 32, 5, 32, (0, 1, 2, 3, 4), 0.5, 2)],
                  [Conv4(num_classes=5).state_dict() for _ in range(3)], "tiny", CIFAR100_NORM)
    monkeypatch.undo()
    assert not list(path.glob("*.tmp")) and load_pool(path).records == records
