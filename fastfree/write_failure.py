"""A file the disk refuses to take (full, over quota, read-only) is said with its path, the disk's free
space and the fix, not as a traceback.

The libraries report it in three ways: a plain write raises OSError without a file name (which the
CLI would take for a bug), torch.save a RuntimeError from its file writer ("basic_ios::clear:
iostream error", then inline_container.cc's "unexpected pos 576 vs 534", or "PytorchStreamWriter
failed writing file"), safetensors a SafetensorError ("I/O error: No space left on device (os error
28)"). Every file fastfree writes for a run or a pool replaces the old one only once the new one is
whole (free/atomic.py, safetensors_io.py, pool/store.py), so what was saved before is kept, and
`--resume` continues from it once there is room.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from safetensors import SafetensorError

from fastfree.errors import FastFreeError

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _free_space(path: Path) -> str | None:
    """The free space on the disk that holds `path` (its nearest existing folder), as words."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    return f"{free / 1e9:.1f} GB" if free >= 1e8 else f"{free / 1e6:.1f} MB"


def _from_torch_writer(error: RuntimeError) -> bool:
    """Whether torch.save's file writer raised it: on a full disk the stream's "basic_ios::clear: iostream
    error", then, as the writer closes, its zip writer's check (the error raised)."""
    marks = ("inline_container", "PytorchStreamWriter", "iostream error")
    return any(m in str(e) for e in (error, error.__context__) if e is not None for m in marks)


def write_failure(path: str | os.PathLike, error: BaseException) -> FastFreeError | None:
    """The refusal to show for `error`, raised while writing `path`; None where it is not a write the disk
    refused (a bug, which keeps its traceback)."""
    path = Path(path)
    code = None
    if isinstance(error, OSError):
        if error.errno not in _FULL | _REFUSED and error.filename is not None:
            return None  # a path problem that names its path (a folder where the file goes): the CLI says it
        code, reason = error.errno, error.strerror or str(error)
    elif isinstance(error, RuntimeError) and _from_torch_writer(error):
        reason = f"torch.save's writer: {str(error).splitlines()[0]}"
    elif isinstance(error, SafetensorError) and "I/O error" in str(error):
        reason = str(error)
        found = re.search(r"os error (\d+)", reason)  # the errno, in Rust's words: permission 13, no space 28
        code = int(found.group(1)) if found else None
    else:
        return None
    free = _free_space(path)
    if code in _REFUSED:
        fix = "check the folder's permissions, or write to another folder"
    elif code in _FULL or code is None:  # a full disk, or a failure torch's writer does not name
        fix = "free space on its disk, or write to a folder on another disk"
    else:
        fix = "check the path and its disk"
    where = f" ({free} left on its disk as the write failed)" if free is not None else ""
    return FastFreeError(f"could not write {path}: {reason}{where}. What was saved before is whole (fastfree replaces "
                         f"a file only once its new version is written): {fix}, then run the command again (`train` "
                         "and `pretrain` continue with --resume)")


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Inside it, a write the disk refuses becomes write_failure's FastFreeError naming `path`."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:
        failure = write_failure(path, e)
        if failure is None:
            raise
        raise failure from e


__all__ = ["write_failure", "writing"]
