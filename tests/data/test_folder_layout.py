"""The authors' layout: <root>/images + split CSVs (filename,label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from fastfree.data.folder_layout import load_image_folder, read_folder_splits  # noqa: E402
from fastfree.data.split import IMAGENET_NORM  # noqa: E402
from fastfree.errors import FastFreeError  # noqa: E402

SIZE = 12  # target image_size; fixtures are made at other sizes
# class names deliberately out of sorted order across the CSVs
SPLIT_CLASSES = {"train": ["n0300", "n0100"], "val": ["n0200"], "test": ["n0500", "n0400"]}
CLASS_IDS = {"n0100": 0, "n0200": 1, "n0300": 2, "n0400": 3, "n0500": 4}
PER_CLASS = 3


def _color(i: int) -> tuple[int, int, int]:
    return (i % 256, (i * 37) % 256, 255 - (i % 256))


def _write_csv(path: Path, rows: list[tuple[str, str]], header: str = "filename,label") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + [f"{f},{c}" for f, c in rows]) + "\n")


def make_dataset(root: Path, layout: str = "split", src_size=(20, 15)) -> dict[str, list[tuple[str, str]]]:
    """Solid-colour PNGs (one JPEG) of src_size; returns the rows of each split."""
    (root / "images").mkdir(parents=True)
    rows: dict[str, list[tuple[str, str]]] = {}
    i = 0
    for split, classes in SPLIT_CLASSES.items():
        rows[split] = []
        for c in classes:
            for k in range(PER_CLASS):
                ext = "jpg" if (split, c, k) == ("val", "n0200", 1) else "png"
                fname = f"{c}_{k:02d}.{ext}"
                Image.new("RGB", src_size, _color(i)).save(root / "images" / fname)
                rows[split].append((fname, c))
                i += 1
    for split, r in rows.items():
        _write_csv(root / "split" / f"{split}.csv" if layout == "split" else root / f"{split}.csv", r)
    return rows


def _colors(rows) -> dict[str, tuple[int, int, int]]:
    out, i = {}, 0
    for split in ("train", "val", "test"):
        for fname, _ in rows[split]:
            out[fname] = _color(i)
            i += 1
    return out


# ----------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_loads_labels_ids_and_resizes(tmp_path, layout):
    root = tmp_path / "mini"
    rows = make_dataset(root, layout)
    colors = _colors(rows)
    seen: list[int] = []
    ds = load_image_folder(root, SIZE, IMAGENET_NORM, progress=seen.append)
    assert ds.name == "mini" and ds.normalization == IMAGENET_NORM and ds.image_size == SIZE
    assert sum(seen) == sum(len(r) for r in rows.values())
    for split, r in rows.items():
        s = ds.split(split)
        assert s.name == split
        assert s.images.dtype == torch.uint8 and s.images.is_contiguous()
        assert tuple(s.images.shape) == (len(r), 3, SIZE, SIZE)
        assert s.labels.dtype == torch.int64
        assert s.labels.tolist() == [CLASS_IDS[c] for _, c in r]
        assert s.class_names == {CLASS_IDS[c]: c for c in SPLIT_CLASSES[split]}
        for n, (fname, _) in enumerate(r):
            img = s.images[n]
            if fname.endswith(".png"):  # lossless solid colour survives resizing exactly
                expect = torch.tensor(colors[fname], dtype=torch.uint8).view(3, 1, 1).expand(3, SIZE, SIZE)
                assert torch.equal(img, expect), fname
            else:  # JPEG: compare with PIL's own decode + resize
                ref = Image.open(root / "images" / fname).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                np.testing.assert_array_equal(img.numpy(), np.asarray(ref).transpose(2, 0, 1))


def test_resize_matches_pil_bilinear_and_chw_order(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(15, 20, 3), dtype=np.uint8)  # H=15, W=20
    Image.fromarray(pixels).save(root / "images" / "n0100_00.png")
    ds = load_image_folder(root, SIZE, IMAGENET_NORM, workers=1)
    ref = np.asarray(Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    got = ds.train.images[3].numpy()  # n0100_00 is the 4th train row (after n0300's three)
    np.testing.assert_array_equal(got, ref.transpose(2, 0, 1))
    assert int(got[2, 5, 7]) == int(ref[5, 7, 2])


def test_no_resize_when_already_the_size(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root, src_size=(SIZE, SIZE))
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / "n0400_02.png")
    ds = load_image_folder(root, SIZE, IMAGENET_NORM, name="custom")
    assert ds.name == "custom"
    # test rows: n0500_00..02 then n0400_00..02 -> index 5 is n0400_02
    np.testing.assert_array_equal(ds.test.images[5].numpy(), pixels.transpose(2, 0, 1))


def test_grayscale_and_rgba_become_rgb(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    Image.new("L", (9, 9), 77).save(root / "images" / "n0300_00.png")
    Image.new("RGBA", (9, 9), (10, 20, 30, 128)).save(root / "images" / "n0300_01.png")
    ds = load_image_folder(root, SIZE, IMAGENET_NORM)
    assert torch.all(ds.train.images[0] == 77)
    assert ds.train.images[1][:, 0, 0].tolist() == [10, 20, 30]


def test_sixteen_bit_grayscale_is_scaled_and_float_refused(tmp_path):
    """Pillow's convert("RGB") clips 16-bit values to 255 (a 16-bit scan decoded as solid white): they
    are scaled to 8 bits, from a 16-bit PNG ("I;16") and a 32-bit integer TIFF ("I") alike; a float
    TIFF has no one scale and is refused, naming the file."""
    root = tmp_path / "ds"
    make_dataset(root)
    Image.fromarray(np.full((SIZE, SIZE), 30000, np.uint16)).save(root / "images" / "n0300_00.png")
    Image.fromarray(np.full((SIZE, SIZE), 20000, np.int32)).save(root / "images" / "n0300_01.png", format="TIFF")
    assert Image.open(root / "images" / "n0300_00.png").mode == "I;16"
    assert Image.open(root / "images" / "n0300_01.png").mode == "I"
    ds = load_image_folder(root, SIZE, IMAGENET_NORM)
    assert torch.all(ds.train.images[0] == 117) and torch.all(ds.train.images[1] == 78)  # round(v / 257)
    Image.fromarray(np.full((SIZE, SIZE), 200, np.int32)).save(root / "images" / "n0300_01.png", format="TIFF")
    assert torch.all(load_image_folder(root, SIZE, IMAGENET_NORM).train.images[1] == 200)  # 8-bit values in "I"
    Image.fromarray(np.full((SIZE, SIZE), 0.5, np.float32)).save(root / "images" / "n0300_02.png", format="TIFF")
    with pytest.raises(FastFreeError, match=r"n0300_02\.png.*floating-point pixels.*8 bits per channel"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_many_images_keep_their_order_across_chunks(tmp_path):
    """More images than one thread-pool chunk: each row's image lands at its own index."""
    root = tmp_path / "big"
    (root / "images").mkdir(parents=True)
    rows = {"train": [], "val": [], "test": []}
    n = 0
    for split, count in (("train", 150), ("val", 3), ("test", 3)):
        for k in range(count):
            fname = f"{split}{k}.png"
            Image.new("RGB", (5, 7), _color(n)).save(root / "images" / fname)
            rows[split].append((fname, f"{split}-c{k % 3}"))
            n += 1
    for split, r in rows.items():
        _write_csv(root / "split" / f"{split}.csv", r)
    seen: list[int] = []
    ds1 = load_image_folder(root, 4, IMAGENET_NORM, progress=seen.append, workers=4)
    ds2 = load_image_folder(root, 4, IMAGENET_NORM, workers=1)
    assert sum(seen) == n and len(seen) >= 3
    assert torch.equal(ds1.train.images, ds2.train.images)
    for k in range(150):
        assert ds1.train.images[k][:, 0, 0].tolist() == list(_color(k))
    assert ds1.train.classes == [3, 4, 5]  # sorted names: test-c* 0-2, train-c* 3-5, val-c* 6-8
    assert ds1.val.classes == [6, 7, 8] and ds1.test.classes == [0, 1, 2]


def test_read_folder_splits_rows_and_blank_lines(tmp_path):
    root = tmp_path / "ds"
    rows = make_dataset(root)
    path = root / "split" / "val.csv"
    path.write_text("\ufefffilename, label\r\n\r\n" + "".join(f" {f} ,{c}\r\n" for f, c in rows["val"]) + "\n\n")
    got = read_folder_splits(root)
    assert got["val"] == rows["val"] and got["train"] == rows["train"]


# ----------------------------------------------------------------------------- errors


def test_root_missing(tmp_path):
    with pytest.raises(FastFreeError, match=r"data set folder .*nowhere does not exist; pass the folder"):
        load_image_folder(tmp_path / "nowhere", SIZE, IMAGENET_NORM)


def test_split_csv_missing_flat_lists_tried_paths(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root, layout="flat")
    (root / "test.csv").unlink()
    with pytest.raises(FastFreeError, match=r"'test' not found: tried .*split/test.csv and .*ds/test.csv"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_split_csv_missing_in_split_folder(tmp_path):
    root = tmp_path / "ds"
    rows = make_dataset(root)
    (root / "split" / "val.csv").unlink()
    _write_csv(root / "val.csv", rows["val"])  # ignored: split/ exists
    with pytest.raises(FastFreeError, match=r"'val' not found: tried .*split/val.csv \(the CSVs in .* used only"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


@pytest.mark.parametrize("header", ["label,filename", "file,label", "filename,label,extra", "n0100_00.png,n0100"])
def test_bad_header(tmp_path, header):
    root = tmp_path / "ds"
    rows = make_dataset(root)
    _write_csv(root / "split" / "train.csv", rows["train"], header=header)
    with pytest.raises(FastFreeError, match=r"train.csv, line 1: expected the header line 'filename,label'"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_wrong_field_count_names_file_and_line(tmp_path):
    root = tmp_path / "ds"
    rows = make_dataset(root)
    lines = ["filename,label"] + [f"{f},{c}" for f, c in rows["test"]]
    lines[2] += ",oops"
    (root / "split" / "test.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FastFreeError, match=r"test.csv, line 3: expected 2 fields \(filename,label\), got 3"):
        load_image_folder(root, SIZE, IMAGENET_NORM)
    lines[2] = "lonely.png"
    (root / "split" / "test.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FastFreeError, match=r"test.csv, line 3: expected 2 fields .* got 1"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_empty_label(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    (root / "split" / "val.csv").write_text("filename,label\nn0200_00.png,\n")
    with pytest.raises(FastFreeError, match=r"val.csv, line 2: empty label"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_image_missing_names_file_and_count(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    (root / "images" / "n0200_00.png").unlink()
    (root / "images" / "n0400_01.png").unlink()
    with pytest.raises(FastFreeError, match=r"2 image file\(s\) .* missing, e\.g\. .*n0200_00.png \(val.csv\)"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_images_folder_missing(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    (root / "images").rename(root / "imgs")
    with pytest.raises(FastFreeError, match=r"image folder .*images does not exist"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_undecodable_image(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    (root / "images" / "n0100_01.png").write_bytes(b"\x89PNG not really a png")
    with pytest.raises(FastFreeError, match=r"cannot decode image .*n0100_01.png .*replace the file"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_truncated_image(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    path = root / "images" / "n0500_00.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FastFreeError, match=r"cannot decode image .*n0500_00.png"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_class_in_two_splits(tmp_path):
    root = tmp_path / "ds"
    rows = make_dataset(root)
    _write_csv(root / "split" / "test.csv", rows["test"] + [("n0300_00.png", "n0300")])
    with pytest.raises(
        FastFreeError, match=r"1 class\(es\) appear in both .*train.csv and .*test.csv, e\.g\. \['n0300'\]; .*disjoint"
    ):
        load_image_folder(root, SIZE, IMAGENET_NORM)


def test_empty_split(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    (root / "split" / "val.csv").write_text("filename,label\n")
    with pytest.raises(FastFreeError, match=r"val.csv: the split is empty .* at least one image"):
        load_image_folder(root, SIZE, IMAGENET_NORM)
    (root / "split" / "val.csv").write_text("")
    with pytest.raises(FastFreeError, match=r"val.csv: the file is empty"):
        load_image_folder(root, SIZE, IMAGENET_NORM)


@pytest.mark.parametrize("bad", [0, -3, 8.5, "84", True])
def test_bad_image_size(tmp_path, bad):
    root = tmp_path / "ds"
    make_dataset(root)
    with pytest.raises(FastFreeError, match=r"image_size must be a positive int"):
        load_image_folder(root, bad, IMAGENET_NORM)


def test_bad_workers(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    with pytest.raises(FastFreeError, match=r"workers must be a positive int"):
        load_image_folder(root, SIZE, IMAGENET_NORM, workers=0)
