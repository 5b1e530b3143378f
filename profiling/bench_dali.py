"""Benchmark: loading an image folder with DALI vs PIL, in one run, one device.

Not a test: it reports, it does not assert. It writes ``--images`` photo-like images (smooth
colour fields, a few hard-edged blobs, mild noise; PNG, JPEG or half of each) of
``--source-size`` px into a temporary folder in the authors' layout (images/ + split CSVs),
then times `load_image_folder` on it with ``decoder="pil"`` (the thread pool, ``--threads``
workers) and ``decoder="dali"`` (DALI's CPU decoder with ``--threads`` threads, or the GPU's
"mixed" decoder when the device is CUDA). Both return the same uint8 [N, 3, S, S] tensors on
the CPU. Medians over repeats after a warm-up: seconds per image, images per second, the
ratio and the device.

    python -m fastfree.profiling.bench_dali --images 2000 --source-size 84 --image-size 84 --json out.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fastfree.commands.common import run_metadata
from fastfree.data import dali_decode
from fastfree.data.folder_layout import load_image_folder
from fastfree.data.split import IMAGENET_NORM
from fastfree.errors import FastFreeError
from fastfree.profiling.timing import median_time, parser, report, resolve_device

CLASSES_PER_SPLIT = {"train": 4, "val": 2, "test": 2}


def photo(size: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 [size, size, 3] image that compresses like a photograph, not like noise or a flat fill."""
    y, x = np.mgrid[0:size, 0:size] / size
    f = rng.uniform(2, 8, 3)
    p = rng.uniform(0, 6.3, 3)
    img = np.stack([np.sin(f[0] * x + p[0]), np.cos(f[1] * y + p[1]), np.sin(f[2] * (x + y) + p[2])], -1)
    img = (img + 1) * 100 + 20
    for _ in range(3):  # hard edges: what resizing and JPEG's blocks have to deal with
        cx, cy, r = rng.uniform(0, 1, 3) * (1, 1, 0.3)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(root: Path, images: int, source_size: int, fmt: str, seed: int = 0) -> None:
    """The authors' layout with ``images`` files spread over the splits' classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = [(split, f"{split}{c:02d}") for split, n in CLASSES_PER_SPLIT.items() for c in range(n)]
    (root / "images").mkdir(parents=True)
    rows: dict[str, list[str]] = {split: [] for split in CLASSES_PER_SPLIT}
    for i in range(images):
        split, label = classes[i % len(classes)]
        ext = fmt if fmt != "mixed" else ("png", "jpg")[i % 2]
        name = f"{label}_{i:05d}.{ext}"
        options = {"quality": 90} if ext == "jpg" else {}
        Image.fromarray(photo(source_size, rng)).save(root / "images" / name, **options)
        rows[split].append(f"{name},{label}")
    (root / "split").mkdir()
    for split, r in rows.items():
        (root / "split" / f"{split}.csv").write_text("filename,label\n" + "\n".join(r) + "\n")


def bench(images: int, source_size: int, image_size: int, fmt: str, threads: int, repeats: int,
          device: torch.device) -> dict:
    dali_decode.require()
    import PIL
    import nvidia.dali

    dali_device = None
    if device.type == "cuda":
        dali_device = device.index if device.index is not None else torch.cuda.current_device()
    with tempfile.TemporaryDirectory(prefix="fastfree-bench-dali-") as tmp:
        root = Path(tmp)
        write_folder(root, images, source_size, fmt)

        def load(decoder: str):
            return lambda: load_image_folder(root, image_size, IMAGENET_NORM, workers=threads, decoder=decoder,
                                             dali_device=dali_device)

        # Same images out of both (within the documented tolerance), or the comparison is moot.
        a, b = load("dali")(), load("pil")()
        diff = (a.train.images.int() - b.train.images.int()).abs()
        times = {"dali": median_time(load("dali"), repeats, device, per=images),
                 "pil": median_time(load("pil"), repeats, device, per=images)}
    return {
        "benchmark": "image-folder loading, DALI vs PIL (seconds per image: read, decode, resize, CSVs)",
        "images": images, "format": fmt, "source_size": source_size, "image_size": image_size,
        "decode_threads": threads, "repeats": repeats,  # "threads" (below) is torch's
        "dali_decoder": "mixed (GPU)" if dali_device is not None else "cpu",
        "dali": nvidia.dali.__version__, "pillow": PIL.__version__,
        "note": "no resize when source_size == image_size (PIL skips it; DALI's CPU path too)",
        "max_abs_diff_train": int(diff.max()), "mean_abs_diff_train": float(diff.float().mean()),
        "times": times,
        "images_per_second": {k: 1.0 / v["median_s"] for k, v in times.items()},
        **run_metadata(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--source-size", type=int, default=84, help="side of the generated images (px)")
    p.add_argument("--image-size", type=int, default=84, help="side they are loaded at (px)")
    p.add_argument("--format", default="mixed", choices=["png", "jpg", "mixed"])
    p.add_argument("--threads", type=int, default=1, help="PIL workers and DALI threads alike")
    args = p.parse_args(argv)
    if args.images < sum(CLASSES_PER_SPLIT.values()):
        p.error(f"--images must be at least {sum(CLASSES_PER_SPLIT.values())} (one per class)")
    try:
        result = bench(args.images, args.source_size, args.image_size, args.format, args.threads, args.repeats,
                       resolve_device(args.device))
    except FastFreeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ips = result["images_per_second"]
    print(f"DALI ({result['dali_decoder']}) {ips['dali']:.0f} images/s, PIL {ips['pil']:.0f} images/s")
    report(result, "dali", "pil", "image", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
