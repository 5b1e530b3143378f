"""Atomic file writes for run state (and its grids): a crash mid-write leaves the previous file, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fastfree.write_failure import writing


def replace_with(path: Path, write, tmp: Path | None = None) -> None:
    """`write(tmp)` to a temporary file beside `path` (default PATH.tmp), then rename it over `path`; a
    failure (or an interrupt) removes the temporary file, so none is left behind. Every file fastfree
    writes whole goes through here."""
    tmp = path.with_name(path.name + ".tmp") if tmp is None else tmp
    try:
        with writing(path):  # a full disk is named, not a traceback (torch.save's is a RuntimeError)
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    replace_with(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: Path, text: str) -> None:
    replace_with(path, lambda tmp: tmp.write_text(text))


def atomic_write_png(path: Path, image) -> None:
    """`image` (an RGB uint8 array [H, W, 3]) as a PNG file: named by the format, as the temporary
    file's name does not end in .png."""
    from PIL import Image

    replace_with(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


__all__ = ["atomic_torch_save", "atomic_write_png", "atomic_write_text", "replace_with"]
