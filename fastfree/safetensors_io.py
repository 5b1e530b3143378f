"""safetensors writes, readable as any other file the process writes, and atomic where asked.

safetensors 0.8 writes through a temporary file that is always created with mode 0600 and renamed
into place, ignoring the umask (safetensors/safetensors#782, fix pending in #789): a pool or an
exported learner would be readable by its owner only, unlike the manifest beside it. Every
safetensors file fastfree writes goes through `save_readable`, which gives it the mode a plain
`open(path, "w")` gives (0666 less the umask).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from fastfree.free.atomic import replace_with


def umask() -> int:
    """The process's umask: from /proc where Linux shows it, else read by setting it and restoring it at
    once (which, for that instant, would also apply to a file another thread creates)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def save_readable(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
                  ) -> None:
    """`safetensors.torch.save_file`, then the mode an ordinary new file gets. The mode is best effort: a
    file system that refuses chmod keeps safetensors' 0600 and the written file."""
    save_file(tensors, str(path), metadata=metadata)
    try:
        os.chmod(Path(path), 0o666 & ~umask())
    except OSError:
        pass


def atomic_save_readable(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                         metadata: dict[str, str] | None = None) -> None:
    """`save_readable` to a temporary file beside `path`, then a rename: `path` is whole or untouched, and a
    failure (or an interrupt) removes the temporary file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    replace_with(path, lambda t: save_readable(tensors, t, metadata), tmp)


__all__ = ["atomic_save_readable", "save_readable", "umask"]
