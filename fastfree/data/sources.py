"""Pick and load a data set from a typed config: built-in, CIFAR-FS pickles or image folders.

``mini-imagenet`` and ``cub`` are the image-folder layout under fixed names (so a pool trained on
one records which, and a multi-domain run can tell them apart), with ImageNet's mean/std and
84 px by default, as the authors train on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fastfree.data.folder_layout import DECODERS
from fastfree.data.split import CIFAR100_NORM, IMAGENET_NORM, FewShotDataset
from fastfree.errors import FastFreeError

SOURCES = ("builtin", "cifar-fs", "folder", "mini-imagenet", "cub")
NAMED_FOLDERS = ("mini-imagenet", "cub")  # the image-folder layout under a fixed data set name
IMAGE_FOLDERS = ("folder", *NAMED_FOLDERS)  # the sources read from image files (the ones a decoder reads)
NORMALIZATIONS = {"cifar100": CIFAR100_NORM, "imagenet": IMAGENET_NORM}
CIFAR_FS_ENV = "FASTFREE_CIFAR_FS"
ROOT_ENVS = {"cifar-fs": CIFAR_FS_ENV, "mini-imagenet": "FASTFREE_MINI_IMAGENET", "cub": "FASTFREE_CUB"}
# the image size a source is used at unless told otherwise (the authors': 32 px CIFAR-FS, 84 px mini / CUB)
DEFAULT_IMAGE_SIZES = {"mini-imagenet": 84, "cub": 84}


@dataclass(frozen=True)
class DataConfig:
    source: str = "builtin"
    root: str | None = None  # cifar-fs: folder of CIFAR_FS_*.pickle; folder: images/ + split CSVs
    image_size: int = 32  # folder layout: resize to this; builtin: render at this size
    builtin_seed: int = 0
    images_per_class: int = 600  # builtin only
    normalization: str = "imagenet"  # folder layout only (cifar-fs uses CIFAR-100's, builtin its own)
    decoder: str = "auto"  # folder layout only: "auto" (DALI on a CUDA device when installed, else PIL), "dali" or "pil"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise FastFreeError(f"unknown data source {self.source!r}: use one of {', '.join(SOURCES)}")
        if self.normalization not in NORMALIZATIONS:
            raise FastFreeError(
                f"unknown normalisation {self.normalization!r}: use one of {', '.join(NORMALIZATIONS)}"
            )
        if self.decoder not in DECODERS:
            raise FastFreeError(f"unknown image decoder {self.decoder!r}: use one of {', '.join(DECODERS)}")
        if self.image_size < 16:
            raise FastFreeError(f"image_size must be at least 16, got {self.image_size}")
        if self.source == "cifar-fs" and self.image_size != 32:  # the pickles are read as they are, never resized
            raise FastFreeError(f"CIFAR-FS images are 32 x 32 and used as they are, not at {self.image_size} px: drop "
                                f"--image-size (size= in --domain); for other sizes use the image-folder layout")

        if self.source in NAMED_FOLDERS and self.normalization != "imagenet":
            raise FastFreeError(f"{self.source} is normalised with ImageNet's mean/std (the authors'); "
                                f"use --data folder to choose another normalisation")

    def resolved_root(self) -> Path:
        env = ROOT_ENVS.get(self.source)
        root = self.root or (os.environ.get(env) if env else None)
        if not root:
            what = "the folder holding CIFAR_FS_{train,val,test}.pickle" if self.source == "cifar-fs" \
                else "the folder holding images/ and the split CSVs"
            hint = f" (or set {env})" if env else ""
            raise FastFreeError(f"--data {self.source} needs --data-root PATH (in a multi-domain run: --domain "
                                f"{self.source}:PATH): {what}{hint}")
        return Path(root)


def load_dataset(cfg: DataConfig, progress=None, device: torch.device | str | None = None) -> FewShotDataset:
    """Load the configured data set on the CPU (move it with `.to(device)`).

    ``device``: where the data will be used; a CUDA device lets DALI decode image folders on it.
    """
    if cfg.source == "builtin":
        from fastfree.data.procedural import build_procedural

        return build_procedural(cfg.builtin_seed, cfg.images_per_class, cfg.image_size)
    if cfg.source == "cifar-fs":
        from fastfree.data.pickle_layout import load_cifar_fs

        return load_cifar_fs(cfg.resolved_root())
    from fastfree.data.folder_layout import load_image_folder

    dali_device = None
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index
        dali_device = index if index is not None else torch.cuda.current_device()
    name = cfg.source if cfg.source in NAMED_FOLDERS else None  # "folder": the folder's own name
    return load_image_folder(cfg.resolved_root(), cfg.image_size, NORMALIZATIONS[cfg.normalization], name=name,
                             progress=progress, decoder=cfg.decoder, dali_device=dali_device)
