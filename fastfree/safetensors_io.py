"""safetensors writes, readable as any other file the process writes.

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


def umask() -> int:
    """The process's umask (read by setting it; restored at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def save_readable(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
                  ) -> None:
    """`safetensors.torch.save_file`, then the mode an ordinary new file gets."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(Path(path), 0o666 & ~umask())


__all__ = ["save_readable", "umask"]
