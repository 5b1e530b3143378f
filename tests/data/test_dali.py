"""The DALI decoder of the image-folder layout: same tensors as the PIL path, within stated tolerances.

Tolerances (levels of uint8), measured, and why:

- PNG, interior pixels (all but the outermost ring): at most 1. Decoding is lossless and
  identical; both resize with the same triangle filter, but PIL rounds to uint8 between its
  horizontal and vertical passes and DALI does not.
- PNG, the outermost ring: PIL renormalises the filter weights that fall inside the image, DALI
  repeats the edge pixels. `test_border_is_edge_handling` pins that down: against PIL run on an
  edge-padded copy, DALI is within 1 level everywhere.
- JPEG: at most 2 in the interior. On the CPU both decode with libjpeg-turbo (accurate IDCT,
  fancy chroma upsampling) and agree exactly today; one more level allows a different build of
  it in Pillow's and nvImageCodec's wheels.
- The whole image, mean absolute difference: at most 0.5 (the ring included).
Images already S x S are not resized by either: PNGs then agree exactly.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw  # noqa: E402

from fastfree.data import dali_decode  # noqa: E402
from fastfree.data import folder_layout  # noqa: E402
from fastfree.data.folder_layout import DECODERS, load_image_folder, wants_dali  # noqa: E402
from fastfree.data.sources import DataConfig, load_dataset  # noqa: E402
from fastfree.data.split import IMAGENET_NORM  # noqa: E402
from fastfree.errors import FastFreeError  # noqa: E402

S = 16
# (width, height, format) per image of a class: shrink, enlarge, already S x S, non-square both ways
SHAPES = [(37, 23, "png"), (9, 13, "jpg"), (S, S, "png"), (61, 100, "png"), (50, 50, "jpg"), (S, S, "jpg"),
          (100, 61, "jpg"), (23, 37, "png")]
SPLIT_CLASSES = {"train": ["n02", "n01"], "val": ["n03"], "test": ["n05", "n04"]}


@pytest.fixture(scope="module")
def dali():
    return pytest.importorskip("nvidia.dali")


def photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth colour fields plus hard-edged blobs: like a photograph, not like flat fills or noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    p = rng.uniform(0, 6.3, 3)
    a = np.stack([np.sin(6 * x + p[0]), np.cos(5 * y + p[1]), np.sin(4 * (x + y) + p[2])], -1)
    im = Image.fromarray(((a + 1) * 100 + 20).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.ellipse([x0, y0, x0 + w // 3, y0 + h // 3], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def make_folder(root: Path) -> dict[str, list[tuple[str, str]]]:
    """The authors' layout: images/ and split/{train,val,test}.csv; every class gets all SHAPES."""
    (root / "images").mkdir(parents=True)
    (root / "split").mkdir()
    rows: dict[str, list[tuple[str, str]]] = {}
    seed = 0
    for split, classes in SPLIT_CLASSES.items():
        rows[split] = []
        for c in classes:
            for k, (w, h, ext) in enumerate(SHAPES):
                name = f"{c}_{k}.{ext}"
                photo(w, h, seed).save(root / "images" / name, **({"quality": 90} if ext == "jpg" else {}))
                rows[split].append((name, c))
                seed += 1
        lines = ["filename,label"] + [f"{f},{c}" for f, c in rows[split]]
        (root / "split" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return rows


def pil_reference(path: Path, size: int = S) -> np.ndarray:
    """folder_layout's PIL path for one file, CHW."""
    im = Image.open(path).convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im).transpose(2, 0, 1)


def edge_padded_reference(path: Path, size: int = S) -> np.ndarray:
    """PIL's resize with DALI's border rule: PIL clips its filter window to the whole (padded)
    image, not to ``box``, so edge-padding the source makes it repeat edge pixels as DALI does."""
    a = np.asarray(Image.open(path).convert("RGB"))
    h, w = a.shape[:2]
    pad = max(w, h) // size + 2  # wider than the filter's reach past the edge
    big = Image.fromarray(np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    return np.asarray(big.resize((size, size), Image.Resampling.BILINEAR, box=(pad, pad, pad + w, pad + h))
                      ).transpose(2, 0, 1)


def diffs(got: torch.Tensor, ref: np.ndarray) -> tuple[int, int, float]:
    """(max over the interior, max over all, mean over all) of |got - ref|."""
    d = np.abs(got.numpy().astype(int) - ref.astype(int))
    return int(d[:, 1:-1, 1:-1].max()), int(d.max()), float(d.mean())


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    root = tmp_path_factory.mktemp("dali") / "mini"
    return root, make_folder(root)


# ----------------------------------------------------------------------------- same tensors as PIL


def test_dali_matches_pil_path(dali, folder):
    root, rows = folder
    seen: list[int] = []
    got = load_image_folder(root, S, IMAGENET_NORM, decoder="dali", progress=seen.append)
    ref = load_image_folder(root, S, IMAGENET_NORM, decoder="pil")
    assert sum(seen) == sum(len(r) for r in rows.values())
    assert got.name == ref.name and got.normalization == ref.normalization
    for split in ("train", "val", "test"):
        g, r = got.split(split), ref.split(split)
        assert g.images.dtype == r.images.dtype == torch.uint8 and g.images.shape == r.images.shape
        assert g.images.is_contiguous()
        assert torch.equal(g.labels, r.labels) and g.class_names == r.class_names
        for n, (fname, _) in enumerate(rows[split]):
            w, h, ext = SHAPES[n % len(SHAPES)]
            inner, worst, mean = diffs(g.images[n], r.images[n].numpy())
            if (w, h) == (S, S) and ext == "png":
                assert worst == 0, fname  # neither resizes; lossless decode
            assert inner <= (1 if ext == "png" else 2), (fname, inner)
            assert mean <= 0.5, (fname, mean)


def test_border_is_edge_handling(dali, tmp_path):
    """The outermost ring differs from PIL only by the border rule: pixel noise shows it at its worst."""
    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate([(100, 61), (37, 23)]):
        paths.append(tmp_path / f"noise{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    got = dali_decode.decode_images(paths, S, threads=1)
    for k, p in enumerate(paths):
        assert diffs(got[k], pil_reference(p))[0] <= 1  # interior
        assert diffs(got[k], edge_padded_reference(p))[1] <= 1  # everywhere


def test_colour_modes_decode_like_pil(dali, tmp_path):
    """Grayscale, palette, RGBA (alpha dropped) and CMYK JPEG: at S x S nothing is resized, so equal."""
    rgb = np.asarray(photo(S, S, 7))
    images = {"l.png": Image.fromarray(rgb).convert("L"), "p.png": Image.fromarray(rgb).convert("P"),
              "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
              "l.jpg": Image.fromarray(rgb).convert("L"), "cmyk.jpg": Image.fromarray(rgb).convert("CMYK")}
    paths = []
    for name, im in images.items():
        paths.append(tmp_path / name)
        im.save(paths[-1])
    got = dali_decode.decode_images(paths, S, threads=1)
    for k, p in enumerate(paths):
        assert diffs(got[k], pil_reference(p))[1] <= (0 if p.suffix == ".png" else 1), p.name


def test_order_batches_and_progress(dali, folder):
    root, rows = folder
    paths = [root / "images" / f for f, _ in rows["train"]]  # 16 files
    seen: list[int] = []
    got = dali_decode.decode_images(paths, S, threads=2, batch_size=5, progress=seen.append)
    assert seen == [5, 5, 5, 1]
    whole = dali_decode.decode_images(paths, S, threads=1)
    assert torch.equal(got, whole)
    for k, p in enumerate(paths):
        assert diffs(got[k], pil_reference(p))[2] <= 0.5


def test_normalised_variant(dali, folder):
    root, rows = folder
    paths = [root / "images" / f for f, _ in rows["val"]]
    images = dali_decode.decode_images(paths, S, threads=1)
    got = dali_decode.decode_normalized(paths, S, IMAGENET_NORM, threads=1)
    assert got.dtype == torch.float32 and got.shape == images.shape
    torch.testing.assert_close(got, IMAGENET_NORM(images), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- choosing the decoder


def test_auto_uses_pil_on_a_cpu_and_dali_for_gpu_decoding(dali, folder, tmp_path, monkeypatch):
    calls: list[int] = []
    real = dali_decode.decode_images

    def spy(paths, *args, **kwargs):
        calls.append(len(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(dali_decode, "decode_images", spy)
    root, rows = folder
    load_image_folder(root, S, IMAGENET_NORM)  # the function's default: PIL
    load_image_folder(root, S, IMAGENET_NORM, decoder="auto")  # on a CPU: PIL (DALI is no faster there)
    assert calls == []
    load_image_folder(root, S, IMAGENET_NORM, decoder="dali")
    assert calls == [len(rows[s]) for s in ("train", "val", "test")]

    files = sorted((root / "images").iterdir())
    assert wants_dali("auto", 0, files) and not wants_dali("auto", None, files)
    assert wants_dali("dali", None, files) and not wants_dali("pil", 0, files)
    gif_root = tmp_path / "gif"
    make_folder(gif_root)
    Image.open(gif_root / "images" / "n01_0.png").save(gif_root / "images" / "n01_0.gif")
    assert not wants_dali("auto", 0, files + [gif_root / "images" / "n01_0.gif"])  # DALI reads no GIF
    csv = gif_root / "split" / "train.csv"
    csv.write_text(csv.read_text().replace("n01_0.png", "n01_0.gif"))
    with pytest.raises(FastFreeError, match=r"decoder 'dali' cannot read files of type \.gif .*--decoder pil"):
        load_image_folder(gif_root, S, IMAGENET_NORM, decoder="dali")


def test_broken_file_is_named(dali, folder, tmp_path):
    root = tmp_path / "broken"
    make_folder(root)
    (root / "images" / "n03_1.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    for decoder in ("dali", "auto"):
        with pytest.raises(FastFreeError, match=r"cannot decode image .*n03_1.jpg .*replace the file"):
            load_image_folder(root, S, IMAGENET_NORM, decoder=decoder)


def test_file_only_pil_reads(dali, tmp_path, monkeypatch):
    """A GIF saved as .png: "dali" says so and names the fix; "auto" lets PIL finish, with a warning."""
    root = tmp_path / "disguised"
    make_folder(root)
    path = root / "images" / "n05_0.png"
    Image.open(path).convert("RGB").save(path, format="GIF")
    with pytest.raises(FastFreeError, match=r"DALI could not decode .*PIL decodes these files: use --decoder pil"):
        load_image_folder(root, S, IMAGENET_NORM, decoder="dali")
    # "auto" as it runs on a GPU (DALI chosen, not forced), here with DALI's CPU pipeline
    with monkeypatch.context() as m, pytest.warns(UserWarning, match=r"PIL decoded the remaining \d+ image"):
        m.setattr(folder_layout, "wants_dali", lambda decoder, device, files: decoder == "auto")
        got = load_image_folder(root, S, IMAGENET_NORM, decoder="auto")
    ref = load_image_folder(root, S, IMAGENET_NORM, decoder="pil")
    assert torch.equal(got.test.images[0], ref.test.images[0])  # n05_0 is test's first row
    assert (got.test.images.int() - ref.test.images.int()).abs().float().mean() <= 0.5


def test_without_dali_the_choice_names_the_fix(folder, monkeypatch):
    """Runs where DALI is absent too: hiding the module simulates a machine without it."""
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` now raises ImportError
    assert not dali_decode.available()
    root, _ = folder
    fix = r'NVIDIA DALI is not installed: pip install -e "\.\[dali\]"'
    with pytest.raises(FastFreeError, match=fix):
        load_image_folder(root, S, IMAGENET_NORM, decoder="dali")
    with pytest.raises(FastFreeError, match=fix):
        dali_decode.decode_images([root / "images" / "n01_0.png"], S)
    with pytest.raises(FastFreeError, match=fix):
        load_dataset(DataConfig(source="folder", root=str(root), image_size=S, decoder="dali"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" without DALI is the plain PIL path: no fallback warning
        ds = load_dataset(DataConfig(source="folder", root=str(root), image_size=S))
    assert ds.image_size == S


def test_config_and_cli_choice():
    from fastfree.cli import build_parser
    from fastfree.commands.common import data_config
    from fastfree.config import get_preset

    assert DataConfig().decoder == "auto"
    with pytest.raises(FastFreeError, match=r"unknown image decoder 'opencv': use one of auto, dali, pil"):
        DataConfig(decoder="opencv")
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions[0].choices["pretrain"]._actions
                  if "--decoder" in a.option_strings)
    assert tuple(action.choices) == DECODERS
    args = parser.parse_args(["pretrain", "--data", "folder", "--data-root", "x", "--decoder", "pil"])
    assert data_config(args, get_preset(args.preset)).decoder == "pil"
    args = parser.parse_args(["pretrain"])
    assert data_config(args, get_preset(args.preset)).decoder == "auto"


# ----------------------------------------------------------------------------- GPU and the benchmark


@pytest.mark.gpu
def test_gpu_mixed_decoder_matches_cpu(dali, folder):
    """nvJPEG's IDCT is not libjpeg's: JPEGs within 3 levels inside and 0.75 on average (unmeasured
    so far: no GPU was lent when this was written); PNGs decode on the CPU and resize on the GPU."""
    root, rows = folder
    paths = [root / "images" / f for f, _ in rows["train"]]
    cpu = dali_decode.decode_images(paths, S, threads=2)
    gpu = dali_decode.decode_images(paths, S, threads=2, device_id=torch.cuda.current_device())
    assert gpu.device.type == "cpu" and gpu.dtype == torch.uint8 and gpu.shape == cpu.shape
    for k, p in enumerate(paths):
        inner, _, mean = diffs(gpu[k], cpu[k].numpy())
        assert inner <= (1 if p.suffix == ".png" else 3) and mean <= 0.75, (p.name, inner, mean)


def test_bench_dali_runs(dali, tmp_path):
    from fastfree.profiling import bench_dali

    out = tmp_path / "d.json"
    assert bench_dali.main(["--images", "16", "--source-size", "20", "--image-size", "16", "--repeats", "1",
                            "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["times"]) == {"dali", "pil"} and r["speedup_dali_over_pil"] > 0
    assert r["images_per_second"]["dali"] > 0 and r["device_name"] and r["dali_decoder"] == "cpu"
