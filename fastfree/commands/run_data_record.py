"""Which data a run learns from, by content: `train --resume` after the data moved.

config.json names the data by its folder; a run whose data moved could not be resumed (the root
differed, and it was refused as another configuration) although pools may move (they are checked by
their weights, pools.json). The run now records its data's digest (data.json: one sha256 per data set
over every split's uint8 images and labels), and a resume whose only difference is where the data
lies is accepted when the data found there has the same digest; config.json then names the new place.
Every resume checks the data found against the digest, moved or not (FASTFREE_CIFAR_FS may point
elsewhere now); a run from before data.json records it on its first resume.

    RUN/data.json   {"sha256": ["...", ...]}   one per data set (per domain)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from fastfree.data.domains import MultiDomainData
from fastfree.data.sources import ROOT_ENVS
from fastfree.data.split import FewShotDataset
from fastfree.errors import FastFreeError
from fastfree.read_back import read_json

DATA_RECORD = "data.json"


def data_digests(data: FewShotDataset | MultiDomainData) -> list[str]:
    """One sha256 per data set over its splits' decoded images and labels (CIFAR-FS's 60,000 images,
    184 MB: ~0.2 s). Data on a GPU is copied to the host split by split."""
    out = []
    for d in data.domains if isinstance(data, MultiDomainData) else [data]:
        h = hashlib.sha256()
        for split in (d.train, d.val, d.test):
            h.update(f"{split.name}|{tuple(split.images.shape)}|".encode())
            for t in (split.images, split.labels):  # as bytes, without a second copy on the host
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        out.append(h.hexdigest())
    return out


def read_digests(run_dir: Path) -> list[str] | None:
    """data.json's digests; None where the run has none (it predates it)."""
    path = Path(run_dir) / DATA_RECORD
    if not path.is_file():
        return None
    fix = "Delete it: the next --resume records the data found then"
    recorded = read_json(path, fix)
    try:
        return list(recorded["sha256"])
    except (KeyError, TypeError) as e:  # valid JSON, but not what `train` writes there
        raise FastFreeError(f"{path} holds no list of digests under \"sha256\" ({e!r}). {fix}") from e


def _data_sets(config: dict) -> list[dict]:
    return config.get("domains") or ([config["data"]] if config.get("data") else [])


def moved_roots(stored: dict, now: dict) -> list[tuple[str | None, str | None]]:
    """(old root, new root) of each data set whose folder alone differs between a run's stored
    configuration and the one given now; [] when none moved or anything else about the data differs
    (that stays a difference for the caller to refuse) (pure)."""
    old, new = _data_sets(stored), _data_sets(now)
    if len(old) != len(new):
        return []
    if any({**a, "root": None} != {**b, "root": None} for a, b in zip(old, new)):
        return []
    moved = [(a, b) for a, b in zip(old, new) if a.get("root") != b.get("root")]
    # a root dropped (None now) is no move: it was forgotten, and stays refused as a difference of the flags
    if any(b.get("root") is None for _, b in moved):
        return []
    for a, b in moved:  # an image folder is named after its folder: renamed, it is another data set to its pool
        if a["source"] == "folder" and a.get("root") and Path(a["root"]).name != Path(b["root"]).name:
            raise FastFreeError(f"--resume: the data moved from {a['root']} to {b['root']}, but a --data folder data "
                                f"set is named after its folder ({Path(a['root']).name}), which its pool and its "
                                f"run record: move it to a folder of that name (e.g. "
                                f"{Path(b['root']).parent / Path(a['root']).name}) and pass that --data-root")
    return [(a.get("root"), b.get("root")) for a, b in moved]


def accept_moved_data(stored: dict, now: dict) -> list[tuple[str | None, str | None]]:
    """Where only the data's folders differ: set the stored roots to the new ones (the data is checked by
    its digest once loaded, check_moved_data) and return the moves."""
    moves = moved_roots(stored, now)
    if moves:
        if stored.get("domains"):
            stored["domains"] = [{**a, "root": b.get("root")} for a, b in zip(stored["domains"], now["domains"])]
        else:
            stored["data"] = {**stored["data"], "root": now["data"].get("root")}
    return moves


def check_same_data(run_dir: Path, data: FewShotDataset | MultiDomainData,
                    moves: list[tuple[str | None, str | None]]) -> bool:
    """On resume: refuse data that is not the data the run started with (moved or not: a variable such as
    FASTFREE_CIFAR_FS may point elsewhere now). Writes nothing (later checks may still refuse the resume):
    True where the run has no data.json yet (it predates it), for the caller to record the data then."""
    described = "; ".join(f"{old or _variable(data)} -> {new}" for old, new in moves)
    recorded = read_digests(run_dir)
    if recorded is None:
        if moves:
            raise FastFreeError(f"--resume: the data's folder differs from the one {run_dir} started with ({described}) "
                                f"and the run has no {DATA_RECORD} (it predates it) to check that it is the same "
                                "data: resume with the data where it started (the same --data-root, or variable)")
        return True
    found = data_digests(data)
    if found != recorded:
        where = f"the data at the new folder ({described})" if moves else "the data found now"
        path = Path(run_dir) / DATA_RECORD
        raise FastFreeError(f"--resume: {where} is not the data {run_dir} started with (sha256 "
                            f"{', '.join(d[:12] for d in found)} here, {', '.join(d[:12] for d in recorded)} recorded): "
                            "resume with the run's own data" + ("" if moves else " (if it is, decoded otherwise here, "
                                                                 f"e.g. by another DALI version, delete {path} to accept it)"))
    return False


def say_moved(moves: list[tuple[str | None, str | None]]) -> None:
    described = "; ".join(f"{old} -> {new}" for old, new in moves)
    print(f"the run's data moved ({described}): the same data (sha256 checked); config.json now names the new "
          "folder", flush=True)


def _variable(data) -> str:
    """What named a root recorded as None: the data's environment variable."""
    names = [d.name for d in data.domains] if isinstance(data, MultiDomainData) else [data.name]
    found = [ROOT_ENVS[n] for n in names if n in ROOT_ENVS]
    return found[0] if found else "no folder"


def record_data(run_dir: Path, data: FewShotDataset | MultiDomainData) -> None:
    from fastfree.commands.common import write_json

    write_json(Path(run_dir) / DATA_RECORD, {"sha256": data_digests(data)})


__all__ = ["DATA_RECORD", "accept_moved_data", "check_same_data", "data_digests", "moved_roots", "read_digests",
           "record_data", "say_moved"]
