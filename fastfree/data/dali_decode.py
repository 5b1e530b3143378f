"""Decode and resize image files with NVIDIA DALI: the optional fast path of the image-folder layout.

It produces what `folder_layout`'s PIL path produces: uint8 ``[N, 3, S, S]`` RGB tensors, each
image stretched to S x S (no crop, aspect ratio not kept) with a bilinear filter that widens
when shrinking (antialiasing), and left untouched when it already is S x S. With
``device_id=None`` everything runs on the CPU ("cpu" decoder, libjpeg-turbo / libpng through
nvImageCodec); with ``device_id=N`` JPEGs are decoded by nvJPEG on GPU N ("mixed" decoder, the
hardware JPEG engine where the GPU has one) and resized there. Results always come back as CPU
tensors, like the PIL path's; the caller moves the data set with ``.to(device)``.

Where the result differs from PIL's (measured in tests/data/test_dali.py):

- resize: DALI's linear filter with ``antialias=True`` is PIL's BILINEAR triangle filter,
  widened by the shrink factor, on the same pixel-centre grid. PIL rounds to uint8 between its
  horizontal and vertical passes and, at the image border, renormalises the filter weights that
  fall inside the image, where DALI keeps floats between passes and repeats the edge pixels. So
  interior pixels differ by at most 1 level; the outermost ring by a few levels on photographs
  and up to ~15 on pixel noise. Neither library exposes a switch to make them agree.
- decode on the CPU: bit-identical to Pillow for 8-bit files (JPEG, grayscale, palette, RGBA
  with alpha dropped, CMYK JPEG). 16-bit PNGs: both scale to 8 bits (the PIL
  path scales 16-bit grayscale itself: Pillow's ``convert("RGB")`` clips it). EXIF orientation is ignored, as Pillow's ``Image.open`` does.
- decode on the GPU: nvJPEG's IDCT differs from libjpeg's by a level or two; fancy chroma
  upsampling is switched on to match libjpeg's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from fastfree.data.split import Normalization
from fastfree.errors import FastFreeError

INSTALL_HINT = 'pip install -e ".[dali]"'
# The formats fn.decoders.image reads (its documentation); anything else (GIF, ...) stays with PIL.
SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2",
                      ".pnm", ".ppm", ".pgm", ".pbm"})
# Images per pipeline run: large enough to keep DALI's thread pool busy, small enough that a
# batch of full-size photographs (~0.5 MB decoded each) stays far below a GB.
BATCH = 256


class DaliDecodeError(FastFreeError):
    """DALI failed on a batch. ``done`` images before it were written; ``batch`` names its files.

    DALI's message names no file, so a caller can decode ``batch`` with PIL to find the bad one.
    """

    def __init__(self, message: str, done: int, batch: Sequence[Path]) -> None:
        super().__init__(message)
        self.done = done
        self.batch = list(batch)


def available() -> bool:
    """Whether DALI can be imported (not cached, so tests can hide it with monkeypatch)."""
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError):  # OSError: a wheel whose shared libraries fail to load
        return False
    return True


def require() -> None:
    if not available():
        raise FastFreeError(
            f"the DALI image decoder was requested but NVIDIA DALI is not installed: {INSTALL_HINT} "
            "(or choose the PIL decoder: --decoder pil, or --decoder auto to use DALI only when present)"
        )


def decodable(paths: Sequence[Path]) -> bool:
    """Whether every file has a suffix DALI decodes (the folder layout's "auto" test)."""
    return all(Path(p).suffix.lower() in SUFFIXES for p in paths)


def _pipeline(batches: Iterator[list[np.ndarray]], image_size: int, device_id: int | None, threads: int,
              batch_size: int, normalization: Normalization | None):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    def resize(images):
        # mode "default" with both extents given: exactly S x S, aspect ratio not kept (PIL's resize)
        return fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_LINEAR, antialias=True)

    # Conditionals (per-sample `if` on data) only on the CPU, where they pay: see below.
    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, enable_conditionals=not gpu)
    def pipe():
        encoded = fn.external_source(source=batches, batch=True, dtype=types.UINT8, ndim=1)
        images = fn.decoders.image(
            encoded, device="mixed" if gpu else "cpu", output_type=types.RGB,
            adjust_orientation=False,  # PIL's Image.open ignores EXIF orientation too
            **({"jpeg_fancy_upsampling": True} if gpu else {}),  # libjpeg's chroma upsampling, as PIL
        )
        if gpu:
            images = resize(images)  # an identity resize is cheap on a GPU
        else:
            shape = images.shape()
            if (shape[0] == image_size) & (shape[1] == image_size):
                pass  # PIL leaves an S x S image alone; DALI's CPU resize would cost as much as the decode
            else:
                images = resize(images)
        if normalization is None:
            return fn.transpose(images, perm=[2, 0, 1])  # HWC -> CHW, still uint8
        # Normalization works on [0, 1] images: (x / 255 - mean) / std = (x - 255 mean) / (255 std)
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                        mean=[255.0 * m for m in normalization.mean],
                                        std=[255.0 * s for s in normalization.std])

    return pipe()


def _error_text(e: BaseException) -> str:
    """DALI's message minus the pipeline traceback it embeds: the part after 'encountered:'."""
    text = str(e)
    tail = text.split("encountered:", 1)[-1]
    lines = [ln.strip() for ln in tail.splitlines()
             if ln.strip() and "pipeline object is no longer valid" not in ln]
    return " ".join(lines)[:300] or type(e).__name__


def _run(paths: Sequence[Path], image_size: int, out: torch.Tensor, device_id: int | None, threads: int | None,
         batch_size: int, normalization: Normalization | None, progress: Callable[[int], None] | None) -> None:
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FastFreeError(f"{len(missing)} image file(s) are missing, e.g. {missing[0]}; restore them")
    if not paths:
        return

    def batches() -> Iterator[list[np.ndarray]]:
        # Reading here (the pipeline's feeding thread) is cheap next to decoding; it keeps the
        # batches in list order and of known membership, so a failure maps to its files.
        for s in range(0, len(paths), batch_size):
            yield [np.fromfile(p, dtype=np.uint8) for p in paths[s:s + batch_size]]

    threads = threads or min(32, os.cpu_count() or 1)
    pipe = _pipeline(batches(), image_size, device_id, threads, min(batch_size, len(paths)), normalization)
    pipe.build()
    done = 0
    while done < len(paths):  # stop before DALI's StopIteration: the count is known
        try:
            (batch,) = pipe.run()
        except RuntimeError as e:  # a broken pipeline cannot go on: the caller decides what next
            raise DaliDecodeError(f"DALI could not decode the batch starting at {paths[done]}: {_error_text(e)}",
                                  done, paths[done:done + batch_size]) from e
        arr = (batch.as_cpu() if device_id is not None else batch).as_array()
        out[done:done + len(arr)] = torch.from_numpy(arr)
        done += len(arr)
        if progress is not None:
            progress(len(arr))


def decode_images(
    paths: Sequence[str | Path],
    image_size: int,
    *,
    device_id: int | None = None,
    threads: int | None = None,
    batch_size: int = BATCH,
    progress: Callable[[int], None] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode + resize ``paths`` to uint8 ``[N, 3, image_size, image_size]`` (CPU), in list order.

    ``device_id=None``: CPU only; an int: decode and resize on that CUDA device. ``threads``
    sizes DALI's CPU thread pool (default: the CPU count, at most 32). ``progress`` is called
    with the images finished after each batch. ``out`` (optional) receives the images, so what
    was decoded before a `DaliDecodeError` is kept there.
    """
    require()
    if out is None:
        out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    _run(paths, image_size, out, device_id, threads, batch_size, None, progress)
    return out


def decode_normalized(
    paths: Sequence[str | Path],
    image_size: int,
    normalization: Normalization,
    *,
    device_id: int | None = None,
    threads: int | None = None,
    batch_size: int = BATCH,
) -> torch.Tensor:
    """As `decode_images`, then normalised in the pipeline: float32 ``normalization(images)``.

    For callers that want network-ready batches straight from files (on the GPU the
    normalisation runs there too); the data sets themselves stay uint8 (4x smaller).
    """
    require()
    out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.float32)
    _run(paths, image_size, out, device_id, threads, batch_size, normalization, None)
    return out
