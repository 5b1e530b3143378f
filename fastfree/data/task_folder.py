"""A few-shot task of one's own, as folders of images (`fastfree adapt`).

::

    support/<class name>/<image>      the labelled examples, one folder per class
    query/<image>                     images to classify, or
    query/<class name>/<image>        labelled ones (their accuracy is reported too)

Class names are the support folders' names, in sorted order (that order is the label order).
Hidden files (a leading dot) are skipped; any other file that is not an image, a nested folder or a
broken link is refused rather than silently left out, so that no example is lost without notice.
Images are decoded as the image-folder data sets are (Pillow, RGB, bilinear to the learner's size,
not cropped), turned by their EXIF orientation, transparency over white.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fastfree.data.folder_layout import decode_photos
from fastfree.errors import FastFreeError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"})
DROP = "it from the folder"


@dataclass(frozen=True)
class TaskFiles:
    """The files of a task: class names (label order), the support files and labels, the query
    files and, when the query folder is split by class, their labels (else None)."""

    classes: tuple[str, ...]
    support: tuple[Path, ...]
    support_labels: tuple[int, ...]
    query: tuple[Path, ...]
    query_labels: tuple[int, ...] | None

    @property
    def shots(self) -> tuple[int, ...]:
        """Support images per class, in class order."""
        return tuple(self.support_labels.count(c) for c in range(len(self.classes)))


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _images_in(folder: Path, what: str, empty_fix: str = "add images to it or remove it") -> list[Path]:
    """The image files directly in `folder` (sorted); anything else there is an error."""
    entries = _visible(folder)
    broken = [p.name for p in entries if p.is_symlink() and not p.exists()]
    if broken:
        raise FastFreeError(f"{folder} ({what}): broken link(s) {', '.join(broken[:3])} point to nothing; restore "
                            "their targets or remove the links")
    nested = [p.name for p in entries if p.is_dir()]
    if nested:
        raise FastFreeError(f"{folder} ({what}) holds sub-folder(s) {', '.join(nested[:3])}: images are read from "
                            "the class folder itself, not below it; move them up or out")
    odd = [p.name for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
    if odd:
        one = len(odd) == 1
        raise FastFreeError(f"{folder} ({what}) holds {len(odd)} file{'' if one else 's'} that "
                            f"{'is' if one else 'are'} not named as an image, e.g. {', '.join(odd[:3])} (images end "
                            f"in {', '.join(sorted(IMAGE_SUFFIXES))}): move {'it' if one else 'them'} out of the "
                            "folder")
    if not entries:
        raise FastFreeError(f"{folder} ({what}) holds no images: {empty_fix}")
    return entries


def _folder(path: str | Path, flag: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FastFreeError(f"{flag} {folder}: not a folder; pass a folder of images "
                            f"({'one sub-folder per class' if flag == '--support' else 'or of class sub-folders'})")
    return folder


def read_support(path: str | Path) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """Class names (sorted folder names), the support files and their labels."""
    root = _folder(path, "--support")
    entries = _visible(root)
    loose = [p.name for p in entries if not p.is_dir()]
    if loose:
        raise FastFreeError(f"--support {root} holds files beside its class folders ({', '.join(loose[:3])}): the "
                            "support set is one sub-folder per class, named after the class; move each image into "
                            "its class's folder")
    if len(entries) < 2:
        raise FastFreeError(f"--support {root} has {len(entries)} class folder(s): a task needs at least 2 classes, "
                            "one sub-folder each")
    classes, files, labels = [], [], []
    for label, folder in enumerate(entries):
        images = _images_in(folder, f"support images of class {folder.name!r}")
        classes.append(folder.name)
        files += images
        labels += [label] * len(images)
    return tuple(classes), files, labels


def read_query(path: str | Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int] | None]:
    """The query files, and their labels when the folder is split by class (names from the support)."""
    root = _folder(path, "--query")
    entries = _visible(root)
    folders = [p for p in entries if p.is_dir()]
    if not folders:
        return _images_in(root, "query images", "add the images to classify"), None
    if len(folders) != len(entries):
        raise FastFreeError(f"--query {root} mixes class folders and loose files: either put every image in its "
                            "class's folder (labelled: accuracy is reported) or none (unlabelled)")
    unknown = [f.name for f in folders if f.name not in classes]
    if unknown:
        raise FastFreeError(f"--query {root}: class folder(s) {', '.join(unknown[:5])} are not classes of the support "
                            f"set ({', '.join(classes)}); name the query's class folders as the support's")
    files, labels = [], []
    for folder in folders:
        images = _images_in(folder, f"query images of class {folder.name!r}")
        files += images
        labels += [classes.index(folder.name)] * len(images)
    return files, labels


def read_task(support: str | Path, query: str | Path) -> TaskFiles:
    classes, s_files, s_labels = read_support(support)
    q_files, q_labels = read_query(query, classes)
    return TaskFiles(classes, tuple(s_files), tuple(s_labels), tuple(q_files),
                     None if q_labels is None else tuple(q_labels))


def decode_task(task: TaskFiles, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query images as uint8 [N, 3, S, S], decoded as the image-folder data set is."""
    return decode_photos(task.support, image_size, DROP), decode_photos(task.query, image_size, DROP)


__all__ = ["IMAGE_SUFFIXES", "TaskFiles", "decode_task", "read_query", "read_support", "read_task"]
