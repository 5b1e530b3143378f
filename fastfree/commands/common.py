"""What every command shares: data set loading on a device, JSON output, run metadata."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fastfree import __version__, allocator
from fastfree.config import Preset, get_preset
from fastfree.data.sources import DEFAULT_IMAGE_SIZES, NAMED_FOLDERS, DataConfig, load_dataset
from fastfree.data.split import FewShotDataset
from fastfree.device import device_name, resolve_device
from fastfree.errors import FastFreeError
from fastfree.free.atomic import atomic_write_text

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def data_config(args, preset: Preset) -> DataConfig:
    """The one data set of a command, from the preset and the flags.

    A multi-domain preset names several data sets; a command that takes one (pretrain, eval,
    profile run, bench) must be told which, rather than silently use the first."""
    if preset.domains and args.data is None:
        names = ", ".join(d.source for d in preset.domains)
        command = getattr(args, "command", "this command")
        raise FastFreeError(
            f"preset {preset.name} has {len(preset.domains)} domains ({names}) but `fastfree {command}` takes one data "
            f"set: pick one with --data SOURCE [--data-root DIR] (e.g. --data {preset.domains[0].source}), or run all "
            f"domains with `fastfree train --preset {preset.name}`")
    cfg = preset.data
    overrides = {}
    if args.data is not None:
        overrides["source"] = args.data
        if args.data != preset.data.source:
            overrides["root"] = None  # a preset's root belongs to its own source
            if args.data in DEFAULT_IMAGE_SIZES:
                overrides["image_size"] = DEFAULT_IMAGE_SIZES[args.data]
    if args.data_root is not None:
        overrides["root"] = str(args.data_root)
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.images_per_class is not None:
        overrides["images_per_class"] = args.images_per_class
    if args.normalization is not None:
        overrides["normalization"] = args.normalization
    if args.decoder is not None:
        overrides["decoder"] = args.decoder
    out = replace(cfg, **overrides)
    if args.data_root is not None and out.source == "builtin":  # was ignored: the run used the built-in data
        raise FastFreeError(f"--data-root {args.data_root} names the folder of --data cifar-fs or folder; the built-in "
                            "data has none: add --data cifar-fs (MetaOptNet pickles) or --data folder (images)")
    return out


def progress_bar(**kwargs):
    """tqdm on a terminal; in a log (not a TTY) one plain line a minute instead of silence."""
    import sys

    from tqdm import tqdm

    if sys.stderr.isatty():
        return tqdm(**kwargs)
    return tqdm(mininterval=60, ascii=True, **kwargs)


def load_on_device(cfg: DataConfig, device: torch.device) -> tuple[FewShotDataset, float]:
    t0 = time.perf_counter()
    if cfg.source in ("folder", *NAMED_FOLDERS):  # the only sources slow enough to need a bar
        with progress_bar(desc="decoding images", unit="img", leave=False) as bar:
            dataset = load_dataset(cfg, progress=bar.update, device=device)  # CUDA: DALI decodes there
    else:
        dataset = load_dataset(cfg)
    return dataset.to(device), time.perf_counter() - t0


def run_metadata(device: torch.device) -> dict:
    return {
        "fastfree": __version__,
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "host": platform.node(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "malloc": None if (m := allocator.current()) is None else asdict(m),
    }


def write_json(path: str | os.PathLike | None, payload: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def machine(args) -> tuple[torch.device, torch.dtype]:
    """The device, threads and dtype of a command (cli.add_machine_flags)."""
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return device, DTYPES[args.dtype]


def setup(args) -> tuple[Preset, torch.device, torch.dtype]:
    preset = get_preset(args.preset)
    return preset, *machine(args)
