"""Reading back the files fastfree wrote: a run's checkpoint, learners and records.

They are written whole (atomically), so one that cannot be read changed afterwards: a copy cut
short, a full or failing disk, an edit. That is said with the file's path and the fix, not as a
traceback from json or torch. A torch file's stored CRC-32 checksums are verified before it is
loaded, because torch.load does not check them: it loads a checkpoint with zeroed bytes inside a
tensor without complaint, and a run resumed from it would go on with damaged weights (a member
stored with checksum 0, as torch writes when told not to compute them, is not checked).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from fastfree.errors import FastFreeError

CHANGED = ("fastfree writes its files whole, so it changed after it was written (a copy cut short, a full or failing "
           "disk, an edit)")


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """The JSON in `path`; a damaged file is refused with `fix` (what the user can do about it)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FastFreeError(f"{path} is damaged (not valid JSON: {e}); {CHANGED}. {fix}") from None


def zip_damage(path: str | os.PathLike) -> str | None:
    """What is wrong with the zip archive torch.save wrote at `path`, or None if every member's
    bytes match their stored checksums. A member stored with checksum 0 is not checked: torch writes
    0 for all of them when told not to compute them (torch.utils.serialization.config.save.compute_crc32
    = False), and zipfile's own testzip would then call a whole file damaged."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:
                    continue
                try:
                    with archive.open(info) as member:  # zipfile checks the CRC-32 as the last bytes are read
                        while member.read(1 << 22):
                            pass
                except zipfile.BadZipFile:
                    return f"the bytes of {info.filename} do not match their stored checksum"
    except (zipfile.BadZipFile, EOFError) as e:  # cut short, or not a torch file at all
        return f"not a whole torch file: {e}"
    return None


def load_torch(path: str | os.PathLike, fix: str, map_location: torch.device | str = "cpu") -> Any:
    """torch.load(path, weights_only=True) of a file fastfree saved, its checksums verified first; a
    damaged file is refused with `fix`."""
    damage = zip_damage(path)
    if damage is not None:
        raise FastFreeError(f"{path} is damaged ({damage}); {CHANGED}. {fix}")
    return torch.load(path, map_location=map_location, weights_only=True)


__all__ = ["CHANGED", "load_torch", "read_json", "zip_damage"]
