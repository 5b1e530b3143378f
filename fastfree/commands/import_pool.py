"""`fastfree import-pool MODEL... --out POOL`: classifiers trained elsewhere as a fastfree pool.

The data flags name the data set the models learned from (its meta-train split): the pool records
its name, image size and normalisation, so `train` and `eval` use the models in their input space.
`--classes FILE` gives each model's classes (ids of that split, as `pretrain` records them); with
them replay merges the images of a class that two teachers share, as in the paper's pool, and each
model's held-out accuracy is measured on the images `pretrain` holds out (what Best-Model ranks
by). Without them every model's classes count as its own and held-out accuracy is unknown.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fastfree.commands.common import data_config, load_on_device, run_metadata, setup, write_json
from fastfree.data.split import ImageSplit, Normalization
from fastfree.errors import FastFreeError
from fastfree.folder_lock import hold
from fastfree.models import build_model
from fastfree.pool.importing import import_model, model_files
from fastfree.pool.store import MANIFEST, TeacherRecord, save_pool, sha256_file
from fastfree.pool.teachers import TeacherSpec, teacher_data


def read_classes(path: str | Path, files: list[Path], ways: int, known: set[int]) -> list[tuple[int, ...]]:
    """Each model's class ids from JSON: a list in the files' order, or {file name: ids}."""
    try:
        given = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FastFreeError(f"--classes {path}: not a readable JSON file ({e})") from e
    if isinstance(given, dict):
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise FastFreeError(f"--classes {path} is keyed by file name, but two model files share a name: give a "
                                "list in the files' order instead")
        missing, unknown = [n for n in names if n not in given], sorted(set(given) - set(names))
        if missing or unknown:
            raise FastFreeError(f"--classes {path}: key it by every model file's name and nothing else (no classes "
                                f"for: {', '.join(missing) or '-'}; no such model file: {', '.join(unknown) or '-'})")
        given = [given[n] for n in names]
    if not isinstance(given, list) or len(given) != len(files):
        raise FastFreeError(f"--classes {path}: expected one list of class ids per model ({len(files)}, in the "
                            "order the files are listed), or an object keyed by file name")
    out = []
    for f, ids in zip(files, given):
        if (not isinstance(ids, list) or len(ids) != ways or len(set(ids)) != ways
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in ids)):
            raise FastFreeError(f"--classes: {f.name} needs {ways} distinct integer class ids (its classifier has "
                                f"{ways} outputs, in that order), got {ids!r}")
        unknown = sorted(set(ids) - known)
        if unknown:
            raise FastFreeError(f"--classes: {f.name}'s classes {unknown} are not classes of the data's meta-train "
                                f"split ({min(known)}..{max(known)}): pass the data the models were trained on")
        out.append(tuple(ids))
    return out


@torch.no_grad()
def heldout_accuracy(state: dict[str, torch.Tensor], arch: str, width: int, classes: tuple[int, ...],
                     split: ImageSplit, normalization: Normalization, fraction: float, batch: int = 256) -> float:
    """Accuracy on the images `pretrain` holds out for these classes (the last `fraction` of each)."""
    data = teacher_data(split, TeacherSpec(0, classes, 0, arch), fraction)
    model = build_model(arch, len(classes), width, split.image_size).to(split.device)
    model.load_state_dict(state)
    model.eval()
    idx, y = data.heldout_idx, data.heldout_y
    correct = sum(int((model(normalization(split.images[idx[i:i + batch]])).argmax(-1) == y[i:i + batch]).sum())
                  for i in range(0, idx.numel(), batch))
    return correct / idx.numel()


def run(args) -> dict:
    preset, device, _ = setup(args)
    out = Path(args.out)
    if (out / MANIFEST).is_file() and not args.overwrite:
        raise FastFreeError(f"{out} already holds a pool: pass --overwrite to replace it, or choose another --out")
    files = model_files(args.models)
    dataset, _ = load_on_device(data_config(args, preset), device)
    t0 = time.perf_counter()
    imported = [import_model(f, args.arch, dataset.image_size) for f in files]
    ways = {c for _, _, c, _ in imported}
    if len(ways) != 1:
        counts = ", ".join(f"{f.name}: {c}" for f, (_, _, c, _) in zip(files, imported))
        raise FastFreeError(f"the models have different numbers of outputs ({counts}); FREE recovers N-way tasks "
                            "for one N: import models of one class count per pool")
    n = ways.pop()
    widths = {w for _, w, _, _ in imported}
    if len(widths) != 1:  # the fast engine stacks one architecture's teachers: their tensors must have one shape
        counts = ", ".join(f"{f.name}: {w}" for f, (_, w, _, _) in zip(files, imported))
        raise FastFreeError(f"the models have different widths ({counts}); a pool's teachers of one architecture "
                            "share a width (they are stacked and run as one): import each width as its own pool")
    if args.classes:
        classes = read_classes(args.classes, files, n, set(dataset.train.classes))
        fraction = preset.pretrain.heldout_fraction
        accs = [round(heldout_accuracy(sd, args.arch, w, c, dataset.train, dataset.normalization, fraction), 6)
                for (sd, w, _, _), c in zip(imported, classes)]
    else:  # ids past the data's own, so no two models share a class and none is mistaken for a data class
        first = 1 + max(max(s.classes) for s in (dataset.train, dataset.val, dataset.test))
        classes = [tuple(range(first + i * n, first + (i + 1) * n)) for i in range(len(files))]
        accs = [None] * len(files)
    records = [TeacherRecord(i, args.arch, w, n, dataset.image_size, c, a, -1)
               for i, ((_, w, _, _), c, a) in enumerate(zip(imported, classes, accs))]
    provenance = {
        "files": [f.name for f in files], "sha256": [sha256_file(f) for f in files],
        "layouts": sorted({layout for *_, layout in imported}), "classes_given": bool(args.classes),
        "heldout_fraction": fraction if args.classes else None,
        "heldout": (f"measured on the last {fraction:.0%} of each class's meta-train images, which the models may "
                    "have trained on" if args.classes else "unknown (no --classes)"),
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    hold(out)  # not while another command writes a pool there (fastfree/folder_lock.py)
    save_pool(out, records, [sd for sd, *_ in imported], dataset.name, dataset.normalization, imported=provenance)
    seconds = time.perf_counter() - t0
    result = {"command": "import-pool", "pool": str(out), "dataset": dataset.name, "image_size": dataset.image_size,
              "arch": args.arch, "teachers": len(records), "ways": n, "widths": sorted({r.width for r in records}),
              "imported": provenance, "heldout_accuracy": accs, "seconds": seconds, **run_metadata(device)}
    print(f"pool of {len(records)} imported {args.arch} teachers ({n}-way, width "
          f"{'/'.join(map(str, result['widths']))}, {', '.join(provenance['layouts'])} layout) written to {out}")
    if args.classes:
        print(f"held-out accuracy: mean {100 * sum(accs) / len(accs):.2f}% (min {100 * min(accs):.2f}%, max "
              f"{100 * max(accs):.2f}%), on images the models may have trained on")
    else:
        print("classes not given (--classes): each model's classes count as its own, held-out accuracy unknown "
              "(Best-Model needs it)")
    write_json(args.json, result)
    return result


__all__ = ["heldout_accuracy", "read_classes", "run"]
