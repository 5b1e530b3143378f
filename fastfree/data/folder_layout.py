"""The authors' layout (miniImageNet, CUB, CIFAR-FS as PNGs): an image folder plus split CSVs.

::

    <root>/images/<filename>
    <root>/split/train.csv   (or <root>/train.csv when there is no split/ folder)
    <root>/split/val.csv
    <root>/split/test.csv

Each CSV starts with the header line ``filename,label``; ``label`` is a class name such as
``n01532829``. Class names map to global integer ids by sorting the names of all three
splits, so ids are stable. Images are decoded with PIL on a thread pool (PIL releases the GIL
while decoding and resizing), or with NVIDIA DALI (``decoder="dali"``, or ``"auto"`` on a CUDA device when DALI
is installed and every file is a format it reads; see `fastfree.data.dali_decode` for how its
pixels differ), and stored as uint8 ``[N, 3, S, S]`` tensors.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

from fastfree.data import dali_decode
from fastfree.data.split import FewShotDataset, ImageSplit, Normalization
from fastfree.errors import FastFreeError

SPLITS = ("train", "val", "test")
HEADER = ("filename", "label")
DECODERS = ("auto", "dali", "pil")  # auto: DALI when importable and every file is a format it decodes
_CHUNK = 64  # images per thread-pool task: amortises scheduling, keeps progress updates frequent


def _split_csv_paths(root: Path) -> dict[str, Path]:
    """The CSV of each split: under <root>/split/ if that folder exists, else directly in <root>."""
    split_dir = root / "split"
    paths: dict[str, Path] = {}
    for split in SPLITS:
        nested, flat = split_dir / f"{split}.csv", root / f"{split}.csv"
        if split_dir.is_dir():
            if not nested.is_file():
                raise FastFreeError(
                    f"split CSV for {split!r} not found: tried {nested} (the CSVs in {root} itself are "
                    f"used only when there is no {split_dir} folder); add {split}.csv with the header "
                    "'filename,label' to the split/ folder"
                )
            paths[split] = nested
        elif flat.is_file():
            paths[split] = flat
        else:
            raise FastFreeError(
                f"split CSV for {split!r} not found: tried {nested} and {flat}; add {split}.csv "
                f"(header 'filename,label', one image per line) in {split_dir} or {root}"
            )
    return paths


def _read_split_csv(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FastFreeError(f"{path}: not UTF-8 text ({e}); save the CSV as UTF-8") from e
    except OSError as e:
        raise FastFreeError(f"{path}: cannot read the file ({e}); check its permissions") from e
    reader = csv.reader(text.splitlines())
    rows: list[tuple[str, str]] = []
    header_seen = False
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        fields = [f.strip() for f in fields]
        if not header_seen:
            if tuple(f.lower() for f in fields) != HEADER:
                raise FastFreeError(
                    f"{path}, line {line}: expected the header line 'filename,label', got "
                    f"{','.join(fields)!r}; make the first line exactly 'filename,label' "
                    "(columns in that order)"
                )
            header_seen = True
            continue
        if len(fields) != 2:
            raise FastFreeError(
                f"{path}, line {line}: expected 2 fields (filename,label), got {len(fields)}: "
                f"{','.join(fields)!r}; fix the row (quote a filename that contains a comma)"
            )
        filename, label = fields
        if not filename or not label:
            raise FastFreeError(
                f"{path}, line {line}: empty {'filename' if not filename else 'label'}; "
                "every row needs both a filename and a class label"
            )
        rows.append((filename, label))
    if not header_seen:
        raise FastFreeError(f"{path}: the file is empty; it needs the header line 'filename,label' and rows")
    if not rows:
        raise FastFreeError(
            f"{path}: the split is empty (a header but no rows); each split needs at least one "
            "image: add rows 'filename,label'"
        )
    return rows


def read_folder_splits(root: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Parse and check the three split CSVs of ``root``: split -> [(filename, class name), ...].

    Checks the header, field counts, non-empty splits and that no class is in two splits. It
    touches no image, so a CLI can call it first to size a progress bar.
    """
    root = Path(root)
    if not root.is_dir():
        raise FastFreeError(
            f"data set folder {root} does not exist; pass the folder that holds images/ and split/ "
            "(split/train.csv, split/val.csv, split/test.csv)"
        )
    paths = _split_csv_paths(root)
    rows = {split: _read_split_csv(path) for split, path in paths.items()}
    classes = {split: {label for _, label in r} for split, r in rows.items()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            shared = sorted(classes[a] & classes[b])
            if shared:
                raise FastFreeError(
                    f"{len(shared)} class(es) appear in both {paths[a]} and {paths[b]}, e.g. "
                    f"{shared[:5]}; meta-train/val/test must have disjoint classes: give each "
                    "class to exactly one split CSV"
                )
    return rows


CSV_ROW = "its row from the split CSV"  # how to drop a broken image of the image-folder layout


def _eight_bit(im):
    """A 16-bit grayscale image (Pillow's "I;16*" modes, or "I" as older Pillow opens a 16-bit PNG)
    scaled to 8 bits: `convert("RGB")` clips such values to 255, which decoded them as solid white.
    Floating-point images have no one scale (0..1 or 0..255): refused."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        if im.mode == "I" and arr.size and 0 <= arr.min() and arr.max() <= 255:  # 8-bit values kept as 32-bit
            return Image.fromarray(arr.astype(np.uint8))
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"32-bit integer pixels outside 0..65535 (mode {im.mode}); save the image with 8 bits "
                             "per channel")
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8))  # 2-D uint8: mode L
    if im.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no one scale; save the image with 8 bits per channel")
    return im


def _photo_rgb(im):
    """A photo as its viewer shows it: turned by its EXIF orientation, transparency over white."""
    from PIL import Image, ImageOps

    im = _eight_bit(ImageOps.exif_transpose(im))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
    return im.convert("RGB")


def _decode_into(
    out: np.ndarray, start: int, paths: Sequence[Path], image_size: int, drop: str = CSV_ROW, photos: bool = False
) -> int:
    """Decode ``paths`` into ``out[start:start+len(paths)]`` (uint8 [N, 3, S, S]); returns the count.
    ``drop`` says how to leave a missing or broken file out, in the error that names it; ``photos``:
    apply EXIF orientation and put transparency over white (a user's own images; the data sets'
    images are decoded as their loaders always have)."""
    from PIL import Image, UnidentifiedImageError

    size = (image_size, image_size)
    for k, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im = _photo_rgb(im) if photos else _eight_bit(im).convert("RGB")
                if im.size != size:
                    im = im.resize(size, Image.Resampling.BILINEAR)
                arr = np.asarray(im)
        except FileNotFoundError as e:
            raise FastFreeError(f"image file {path} is missing; restore it or remove {drop}") from e
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise FastFreeError(
                f"cannot decode image {path} ({type(e).__name__}: {e}); replace the file with a valid "
                f"image or remove {drop}"
            ) from e
        out[start + k] = arr.transpose(2, 0, 1)
    return len(paths)


def _decode_split(
    paths: list[Path],
    image_size: int,
    pool: ThreadPoolExecutor,
    progress: Callable[[int], None] | None,
    drop: str = CSV_ROW,
    photos: bool = False,
) -> torch.Tensor:
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    out = images.numpy()  # shares memory: workers write straight into the tensor
    futures = {
        pool.submit(_decode_into, out, s, paths[s : s + _CHUNK], image_size, drop, photos)
        for s in range(0, len(paths), _CHUNK)
    }
    pending = futures
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                n = f.result()  # re-raises a worker's FastFreeError
                if progress is not None:
                    progress(n)
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    return images


def _decode_split_dali(
    paths: list[Path],
    image_size: int,
    strict: bool,
    device_id: int | None,
    threads: int,
    pool: ThreadPoolExecutor,
    progress: Callable[[int], None] | None,
) -> torch.Tensor:
    """DALI decoding; on a failed batch PIL decodes it, which names a broken file in its error.

    ``strict`` ("dali" chosen explicitly): a batch PIL decodes but DALI cannot is an error.
    Otherwise ("auto") PIL finishes the split, with a warning: the two differ only by resize
    rounding and the border rule (see dali_decode), so a mixed split is still the same data.
    """
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    try:
        dali_decode.decode_images(paths, image_size, device_id=device_id, threads=threads, progress=progress,
                                  out=images)
    except dali_decode.DaliDecodeError as e:
        rest = e.batch if strict else paths[e.done:]
        images[e.done:e.done + len(rest)] = _decode_split(rest, image_size, pool, None if strict else progress)
        if strict:
            raise FastFreeError(f"{e}; PIL decodes these files: use --decoder pil (or auto)") from e
        warnings.warn(f"{e}; PIL decoded the remaining {len(rest)} image(s) of the split instead", stacklevel=3)
    return images


def wants_dali(decoder: str, dali_device: int | None, files: list[Path]) -> bool:
    """Whether DALI decodes: when chosen, or under "auto" when it decodes on a GPU, is installed and
    reads every file. Not on a CPU under "auto": there DALI is no faster than PIL's thread pool
    (measured 0.78-1.02x, profiling/results/2026-11-26-cpu-bench_dali.json)."""
    if decoder == "dali":
        return True
    return (decoder == "auto" and dali_device is not None and dali_decode.available()
            and dali_decode.decodable(files))


def load_image_folder(
    root: str | Path,
    image_size: int,
    normalization: Normalization,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    decoder: str = "pil",
    dali_device: int | None = None,
) -> FewShotDataset:
    """Load an image-folder + split-CSV data set as uint8 ``[N, 3, image_size, image_size]``.

    Images are converted to RGB and resized (bilinear) to ``image_size`` unless already that
    size. ``progress``, if given, is called from the calling thread with the number of images
    decoded since its last call (``tqdm.update`` fits). ``workers`` sizes the decoding thread
    pool (default: the CPU count, at most 32). ``name`` defaults to the folder's name.
    ``decoder``: "pil" (the default here: the reference path), "dali" or "auto" (DALI when
    decoding on a GPU, installed, and every file is a format it decodes; else PIL); `DataConfig`
    defaults to "auto". ``dali_device``: the CUDA device DALI decodes on (None: the CPU).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise FastFreeError(f"image_size must be a positive int (e.g. 84 or 32), got {image_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise FastFreeError(f"workers must be a positive int or None, got {workers!r}")
    if decoder not in DECODERS:
        raise FastFreeError(f"unknown image decoder {decoder!r}: use one of {', '.join(DECODERS)}")
    if decoder == "dali":
        dali_decode.require()  # before reading anything: the fix is an install, not the data
    root = Path(root)
    rows = read_folder_splits(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise FastFreeError(
            f"image folder {images_dir} does not exist; put the images named in the split CSVs "
            f"under {images_dir}"
        )

    files = {split: [images_dir / fn for fn, _ in r] for split, r in rows.items()}
    missing = [(split, p) for split in SPLITS for p in files[split] if not p.is_file()]
    if missing:
        shown = ", ".join(f"{p} ({s}.csv)" for s, p in missing[:5])
        raise FastFreeError(
            f"{len(missing)} image file(s) named in the split CSVs are missing, e.g. {shown}; "
            f"restore them under {images_dir} or remove their rows"
        )

    all_files = [p for split in SPLITS for p in files[split]]
    if decoder == "dali" and not dali_decode.decodable(all_files):
        odd = sorted({p.suffix or p.name for p in all_files if p.suffix.lower() not in dali_decode.SUFFIXES})
        raise FastFreeError(
            f"decoder 'dali' cannot read files of type {', '.join(odd[:5])} (it reads "
            f"{', '.join(sorted(dali_decode.SUFFIXES))}); convert them or use --decoder pil (or auto)"
        )
    use_dali = wants_dali(decoder, dali_device, all_files)

    class_ids = {c: i for i, c in enumerate(sorted({label for r in rows.values() for _, label in r}))}
    n_workers = workers or min(32, os.cpu_count() or 1)
    splits: dict[str, ImageSplit] = {}
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="fastfree-decode") as pool:
        for split in SPLITS:
            if use_dali:
                images = _decode_split_dali(files[split], image_size, decoder == "dali", dali_device, n_workers,
                                            pool, progress)
            else:
                images = _decode_split(files[split], image_size, pool, progress)
            labels = torch.tensor([class_ids[label] for _, label in rows[split]], dtype=torch.int64)
            names = {class_ids[c]: c for c in sorted({label for _, label in rows[split]})}
            splits[split] = ImageSplit(split, images, labels, names)
    return FewShotDataset(
        name or root.resolve().name, splits["train"], splits["val"], splits["test"], normalization
    )


def decode_photos(paths: Sequence[Path], image_size: int, drop: str, workers: int | None = None) -> torch.Tensor:
    """A user's own image files with Pillow, as this layout decodes (RGB, bilinear to ``image_size``,
    not cropped) and turned by their EXIF orientation, transparency over white: uint8
    ``[N, 3, S, S]``. ``drop`` says how to leave a broken file out (named in the error)."""
    n_workers = workers or min(32, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="fastfree-decode") as pool:
        return _decode_split(list(paths), image_size, pool, None, drop, photos=True)
