"""`--domain SPEC`: one domain of a multi-domain run as a DataConfig.

    SOURCE[:ROOT][,size=N][,seed=N][,images=N][,norm=NAME]

e.g. ``builtin``, ``builtin,size=48,seed=1``, ``cifar-fs:/data/cifar-fs``,
``mini-imagenet:/data/mini``, ``cub:/data/cub,size=84``. Unset fields come from the
`base` config of the same source when the preset has one (so a preset's domains keep their
settings when only their roots are given), else from the source's defaults (84 px for
mini-imagenet and CUB, 32 px otherwise). size= applies to the built-in data and the image
folders (CIFAR-FS's pickles are 32 px, and another size is refused), seed= and images= to the
built-in data, norm= to the folder layout.
"""

from __future__ import annotations

from dataclasses import replace

from fastfree.data.sources import DEFAULT_IMAGE_SIZES, SOURCES, DataConfig
from fastfree.errors import FastFreeError

_KEYS = {"size": "image_size", "seed": "builtin_seed", "images": "images_per_class", "norm": "normalization"}
_INTS = {"image_size", "builtin_seed", "images_per_class"}
EXAMPLE = "e.g. --domain builtin,size=48,seed=1 or --domain cifar-fs:/data/cifar-fs"


def parse_domain(spec: str, base: tuple[DataConfig, ...] = ()) -> DataConfig:
    head, *options = spec.split(",")
    source, _, root = head.partition(":")
    if source not in SOURCES:
        raise FastFreeError(f"--domain {spec!r}: unknown data source {source!r}; use one of "
                            f"{', '.join(SOURCES)} ({EXAMPLE})")
    same = [c for c in base if c.source == source]
    cfg = same[0] if same else DataConfig(source=source, image_size=DEFAULT_IMAGE_SIZES.get(source, 32))
    fields: dict = {"root": root or cfg.root}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in _KEYS:
            raise FastFreeError(f"--domain {spec!r}: bad option {option!r}; options are "
                                f"{', '.join(k + '=...' for k in _KEYS)} ({EXAMPLE})")
        name = _KEYS[key]
        try:
            fields[name] = int(value) if name in _INTS else value
        except ValueError:
            raise FastFreeError(f"--domain {spec!r}: {key} must be an integer, got {value!r}") from None
    return replace(cfg, **fields)
