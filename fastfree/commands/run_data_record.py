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
import json
from pathlib import Path

from fastfree.data.domains import MultiDomainData
from fastfree.data.split import FewShotDataset
from fastfree.errors import FastFreeError

DATA_RECORD = "data.json"


def data_digests(data: FewShotDataset | MultiDomainData) -> list[str]:
    """One sha256 per data set over its splits' images and labels (CIFAR-FS's 60,000 images, 184 MB: ~0.2 s)."""
    out = []
    for d in data.domains if isinstance(data, MultiDomainData) else [data]:
        h = hashlib.sha256()
        for split in (d.train, d.val, d.test):
            h.update(f"{split.name}|{tuple(split.images.shape)}|".encode())
            for t in (split.images, split.labels):  # hashed in place (no copy of miniImageNet's 1.3 GB)
                h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))
        out.append(h.hexdigest())
    return out


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
    moves = [(a.get("root"), b.get("root")) for a, b in zip(old, new) if a.get("root") != b.get("root")]
    # a root dropped (None now) is no move: it was forgotten, and stays refused as a difference of the flags
    return moves if all(b is not None for _, b in moves) else []


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
                    moves: list[tuple[str | None, str | None]]) -> None:
    """On resume: refuse data that is not the data the run started with (moved or not: a variable such as
    FASTFREE_CIFAR_FS may point elsewhere now); a run from before data.json records its data now."""
    described = "; ".join(f"{old} -> {new}" for old, new in moves)
    path = Path(run_dir) / DATA_RECORD
    if not path.is_file():
        if moves:
            raise FastFreeError(f"--resume: the data's folder differs from the one {run_dir} started with ({described}) "
                                f"and the run has no {DATA_RECORD} (it predates it) to check that it is the same "
                                "data: put the data back where config.json names it, or pass that --data-root")
        record_data(run_dir, data)
        return
    recorded = json.loads(path.read_text())["sha256"]
    found = data_digests(data)
    if found != recorded:
        where = f"the data at the new folder ({described})" if moves else "the data found now"
        raise FastFreeError(f"--resume: {where} is not the data {run_dir} started with (sha256 "
                            f"{', '.join(d[:12] for d in found)} here, {', '.join(d[:12] for d in recorded)} recorded): "
                            "resume with the run's own data" + ("" if moves else " (if it is, decoded otherwise here, "
                                                                 f"e.g. by another DALI version, delete {path} to accept it)"))
    if moves:
        print(f"the run's data moved ({described}): the same data (sha256 checked); config.json now names the new "
              "folder", flush=True)


def record_data(run_dir: Path, data: FewShotDataset | MultiDomainData) -> None:
    from fastfree.commands.common import write_json

    write_json(Path(run_dir) / DATA_RECORD, {"sha256": data_digests(data)})


__all__ = ["DATA_RECORD", "accept_moved_data", "check_same_data", "data_digests", "moved_roots", "record_data"]
