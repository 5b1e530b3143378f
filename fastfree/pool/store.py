"""A teacher pool on disk: `weights.safetensors` + `manifest.json`.

The manifest records, per teacher, the architecture, width, image size, class ids (global
ids of the data set) and held-out accuracy, plus the data set's name and normalisation,
the pretraining config and the fastfree version. It carries a SHA-256 of the weights file
and of its own content, so a tampered or mismatched pool fails to load with a clear error
instead of silently evaluating the wrong models.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from fastfree import __version__
from fastfree.data.split import Normalization
from fastfree.errors import FastFreeError
from fastfree.models import ARCHITECTURES, build_model, default_width
from fastfree.safetensors_io import save_readable
from fastfree.write_failure import writing

FORMAT = "fastfree-pool"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TeacherRecord:
    index: int
    arch: str
    width: int
    num_classes: int
    image_size: int
    classes: tuple[int, ...]
    heldout_accuracy: float | None  # None: unknown (an imported model whose classes were not given)
    seed: int
    best_epoch: int = -1

    def to_dict(self) -> dict:
        return {
            "index": self.index, "arch": self.arch, "width": self.width, "num_classes": self.num_classes,
            "image_size": self.image_size, "classes": list(self.classes),
            "heldout_accuracy": self.heldout_accuracy, "seed": self.seed, "best_epoch": self.best_epoch,
        }


@dataclass
class Pool:
    path: Path
    dataset: str
    normalization: Normalization
    records: list[TeacherRecord]
    state_dicts: list[dict[str, torch.Tensor]]
    manifest: dict

    def __len__(self) -> int:
        return len(self.records)

    def model(self, i: int, device: torch.device | str = "cpu") -> nn.Module:
        r = self.records[i]
        m = build_model(r.arch, r.num_classes, r.width, r.image_size)
        m.load_state_dict(self.state_dicts[i])
        return m.to(device).eval()

    def models(self, device: torch.device | str = "cpu") -> list[nn.Module]:
        return [self.model(i, device) for i in range(len(self))]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_pool(
    path: str | Path, records: list[TeacherRecord], state_dicts: list[dict[str, torch.Tensor]],
    dataset: str, normalization: Normalization, pretrain_config: dict | None = None,
    provenance: dict | None = None, imported: dict | None = None,
) -> Path:
    """Write the pool atomically: both files go to temporary names first, the manifest last.

    `provenance` ({"data", "dtype", "engine"}) lets a later `pretrain --resume` grow the pool
    only with teachers trained the same way; `imported` describes models trained elsewhere
    (`fastfree import-pool`: their files, checksums and layouts)."""
    path = Path(path)
    if len(records) != len(state_dicts) or not records:
        raise FastFreeError("save_pool needs one state dict per teacher record, and at least one teacher")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"teacher{r.index:04d}.{k}": v.detach().to("cpu").contiguous()
        for r, sd in zip(records, state_dicts) for k, v in sd.items()
    }
    tmp_weights = path / (WEIGHTS + ".tmp")
    tmp_manifest = path / (MANIFEST + ".tmp")
    try:
        with writing(path / WEIGHTS):
            save_readable(tensors, tmp_weights, metadata={"format": FORMAT})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fastfree_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dataset": {"name": dataset, "split": "train", "normalization": normalization.to_dict()},
            "pretrain": pretrain_config or {},
            **({"provenance": provenance} if provenance is not None else {}),
            **({"imported": imported} if imported is not None else {}),
            "teachers": [r.to_dict() for r in records],
            "weights_file": WEIGHTS,
            "weights_sha256": sha256_file(tmp_weights),
        }
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        with writing(path / MANIFEST):
            tmp_manifest.write_text(json.dumps(manifest, indent=2))
    except BaseException:  # nothing half-written stays behind; the pool in place is untouched
        tmp_weights.unlink(missing_ok=True)
        tmp_manifest.unlink(missing_ok=True)
        raise
    # the commit: the weights, then the manifest. A save killed between the two renames leaves the
    # new weights beside the old manifest, the new one under its temporary name: load_pool finishes it
    os.replace(tmp_weights, path / WEIGHTS)
    os.replace(tmp_manifest, path / MANIFEST)
    return path


def _finish_interrupted_save(path: Path) -> None:
    """Complete a save_pool killed between its two renames: the temporary manifest is intact and names
    the weights now in place (their checksum). Otherwise nothing is touched."""
    pending, weights = path / (MANIFEST + ".tmp"), path / WEIGHTS
    if not pending.is_file() or not weights.is_file():
        return
    try:
        manifest = json.loads(pending.read_text())
    except (ValueError, UnicodeDecodeError):
        return  # a save killed while writing it: its weights were never put in place
    if (isinstance(manifest, dict) and manifest.get("manifest_sha256") == _manifest_digest(manifest)
            and manifest.get("weights_sha256") == sha256_file(weights)):
        os.replace(pending, path / MANIFEST)


def _fail(path: Path, problem: str, fix: str) -> FastFreeError:
    return FastFreeError(f"pool {path}: {problem}. {fix}")


def load_pool(path: str | Path) -> Pool:
    path = Path(path)
    regen = f"Re-create it with `fastfree pretrain --out {path}`."
    if path.is_file():
        where = f" (the pool is {path.parent})" if path.name in (MANIFEST, WEIGHTS) else ""
        raise _fail(path, "is a file, not a pool directory", f"Pass the folder that holds {MANIFEST}{where}.")
    if not path.is_dir():
        raise _fail(path, "no such directory", f"Train a pool first with `fastfree pretrain --out {path}`, or pass --pool.")
    _finish_interrupted_save(path)
    mpath = path / MANIFEST
    if not mpath.is_file() and (path / "config.json").is_file():  # a run directory (fastfree train)
        own = " Its own pool, if it pretrained one, is " + str(path / "pool") + "." if (path / "pool").is_dir() else ""
        raise _fail(path, "is a run directory (fastfree train), not a pool", f"Pass a pool's folder.{own}")
    if not mpath.is_file():
        raise _fail(path, f"{MANIFEST} is missing", f"A pool directory holds {MANIFEST} and {WEIGHTS}. {regen}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"{MANIFEST} is not valid JSON ({e})", regen) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(path, f"{MANIFEST} is not a fastfree pool manifest", regen)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"manifest format version {manifest.get('format_version')} is not the supported "
                          f"{FORMAT_VERSION}", f"Use the fastfree version that wrote it ({manifest.get('fastfree_version')}) or {regen[0].lower()}{regen[1:]}")
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise _fail(path, f"{MANIFEST} was modified after it was written (its checksum does not match)",
                    f"Restore the original file. {regen}")
    wpath = path / WEIGHTS
    if not wpath.is_file():
        raise _fail(path, f"{WEIGHTS} is missing", regen)
    if sha256_file(wpath) != manifest.get("weights_sha256"):
        raise _fail(path, f"{WEIGHTS} does not match the manifest (SHA-256 differs): the weights were "
                          "replaced or corrupted", regen)
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise _fail(path, f"{WEIGHTS} cannot be read ({e})", regen) from e
    try:
        records = [
            TeacherRecord(int(t["index"]), str(t["arch"]), int(t["width"]), int(t["num_classes"]),
                          int(t["image_size"]), tuple(int(c) for c in t["classes"]),
                          None if t["heldout_accuracy"] is None else float(t["heldout_accuracy"]), int(t["seed"]),
                          int(t.get("best_epoch", -1)))
            for t in manifest["teachers"]
        ]
        normalization = Normalization.from_dict(manifest["dataset"]["normalization"])
        dataset = str(manifest["dataset"]["name"])
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(path, f"{MANIFEST} lacks a field or has a bad value ({e!r})", regen) from e
    state_dicts = []
    for r in records:
        if r.arch not in ARCHITECTURES:
            raise _fail(path, f"teacher {r.index} has unknown architecture {r.arch!r}",
                        f"Known: {', '.join(ARCHITECTURES)}. {regen}")
        if r.num_classes != len(r.classes):
            raise _fail(path, f"teacher {r.index} has {r.num_classes} outputs but {len(r.classes)} class ids",
                        regen)
        prefix = f"teacher{r.index:04d}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sd:
            raise _fail(path, f"no weights for teacher {r.index} in {WEIGHTS}", regen)
        model = build_model(r.arch, r.num_classes, r.width, r.image_size)
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[:3]
            raise _fail(path, f"teacher {r.index}'s weights do not fit a {r.arch} (width {r.width}, "
                              f"{r.num_classes} classes): {' '.join(first)}", regen) from e
        state_dicts.append(sd)
    return Pool(path, dataset, normalization, records, state_dicts, manifest)


def records_from_training(trained, cfg, image_size: int) -> list[TeacherRecord]:
    """Manifest records for the output of `pretrain_pool` (each teacher with its own architecture)."""
    return [
        TeacherRecord(t.spec.index, t.spec.arch, cfg.width if cfg.width is not None else default_width(t.spec.arch),
                      cfg.ways, image_size, t.spec.classes, round(float(t.heldout_accuracy), 6), t.spec.seed,
                      t.best_epoch)
        for t in trained
    ]
