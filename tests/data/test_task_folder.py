"""A task of one's own as folders: class order, labelled and unlabelled queries, and photos decoded as a
viewer shows them (EXIF orientation, transparency over white)."""

import numpy as np
import pytest
from PIL import Image

from fastfree.data.task_folder import decode_task, read_task
from fastfree.errors import FastFreeError


def _save(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)


def test_classes_are_sorted_folder_names_and_labels_follow_them(tmp_path):
    grey = np.full((8, 8, 3), 128, np.uint8)
    for c in ("zebra", "ant", "Moth"):
        for i in range(2):
            _save(tmp_path / "s" / c / f"{i}.PNG", grey)  # suffixes in any case
        _save(tmp_path / "q" / c / "x.jpg", grey)
    task = read_task(tmp_path / "s", tmp_path / "q")
    assert task.classes == ("Moth", "ant", "zebra") and task.shots == (2, 2, 2)
    assert task.support_labels == (0, 0, 1, 1, 2, 2) and task.query_labels == (0, 1, 2)
    assert [p.parent.name for p in task.query] == list(task.classes)
    _save(tmp_path / "flat" / "b.png", grey)
    _save(tmp_path / "flat" / "a.png", grey)
    flat = read_task(tmp_path / "s", tmp_path / "flat")
    assert [p.name for p in flat.query] == ["a.png", "b.png"] and flat.query_labels is None


def test_photos_are_turned_by_exif_and_transparency_is_white(tmp_path):
    left_red = np.zeros((8, 16, 3), np.uint8)  # 16 wide, 8 high: red left half, blue right half
    left_red[:, :8, 0] = 255
    left_red[:, 8:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: a viewer turns it 90 degrees clockwise, so the left half goes on top
    _save(tmp_path / "s" / "a" / "turned.jpg", left_red, exif=exif, quality=95)
    clear = np.zeros((16, 16, 4), np.uint8)
    clear[..., 0] = 255  # red, but fully transparent
    _save(tmp_path / "s" / "b" / "clear.png", clear)
    _save(tmp_path / "q" / "x.png", clear[..., :3])
    support, query = decode_task(read_task(tmp_path / "s", tmp_path / "q"), 16)
    turned = support[0].numpy().astype(int)
    assert turned[0, 1, 8] > 200 and turned[2, 1, 8] < 60  # top: red
    assert turned[2, 14, 8] > 200 and turned[0, 14, 8] < 60  # bottom: blue
    assert (support[1] == 255).all()  # transparency over white
    assert query[0, 0].eq(255).all() and query[0, 1:].eq(0).all()  # no alpha: as stored


def test_a_sixteen_bit_photo_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    _save(tmp_path / "s" / "a" / "scan.png", ramp)
    _save(tmp_path / "s" / "b" / "other.png", ramp)
    _save(tmp_path / "q" / "x.png", (ramp // 257).astype(np.uint8))  # the same picture at 8 bits
    support, query = decode_task(read_task(tmp_path / "s", tmp_path / "q"), 16)
    assert (support[0].int() - query[0].int()).abs().max() <= 1
    assert 120 < support[0].float().mean() < 135  # clipped, 99.6 % of it was 255


def test_a_folder_that_is_not_a_task_is_refused(tmp_path):
    with pytest.raises(FastFreeError, match="not a folder"):
        read_task(tmp_path / "missing", tmp_path)
