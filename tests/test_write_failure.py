"""fastfree/write_failure.py: a write the disk refuses is named with the path, the free space and the
fix, what was saved before stays whole, and anything else keeps its traceback."""

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from fastfree.errors import FastFreeError
from fastfree.free.atomic import atomic_torch_save
from fastfree.write_failure import write_failure, writing

FULL = Path("/dev/full")  # Linux: every write to it fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")


@pytest.mark.parametrize("error, says", [
    (OSError(errno.ENOSPC, "No space left on device"), "free space on its disk"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "free space on its disk"),
    (PermissionError(errno.EACCES, "Permission denied"), "check the folder's permissions"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "torch.save's writer"),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "free space on its disk"),
    (RuntimeError("basic_ios::clear: iostream error"), "free space on its disk"),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), "free space"),
    (SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"), "folder's permissions"),
])
def test_refused_writes_are_named_with_the_path_free_space_and_fix(tmp_path, error, says):
    failure = write_failure(tmp_path / "run" / "checkpoint.pt", error)  # run/ not made yet: its parent's disk
    assert isinstance(failure, FastFreeError)
    message = str(failure)
    assert message.startswith(f"could not write {tmp_path / 'run' / 'checkpoint.pt'}: ") and says in message
    assert "left on its disk as the write failed" in message and "--resume" in message


@pytest.mark.parametrize("error", [RuntimeError("a bug"), SafetensorError("invalid dtype"),
                                   IsADirectoryError(errno.EISDIR, "Is a directory", "/x/taken.tmp", None, "/x/taken")])
def test_other_errors_keep_their_traceback(tmp_path, error):
    assert write_failure(tmp_path / "x", error) is None
    with pytest.raises(type(error)):
        with writing(tmp_path / "x"):
            raise error
    with pytest.raises(ValueError):  # not a write at all
        with writing(tmp_path / "x"):
            raise ValueError("not about the disk")


@needs_dev_full
def test_torch_save_on_a_full_disk_keeps_the_previous_file_whole(tmp_path):
    """torch.save's real failure, not a simulated one: its temporary file is a link to /dev/full."""
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"iteration": 3}, path)
    os.symlink(FULL, tmp_path / "checkpoint.pt.tmp")
    with pytest.raises(FastFreeError, match=r"could not write .*checkpoint\.pt: torch\.save's writer: .*free space"):
        atomic_torch_save({"iteration": 4, "w": torch.zeros(100_000)}, path)
    assert torch.load(path, weights_only=True) == {"iteration": 3}
    assert not (tmp_path / "checkpoint.pt.tmp").exists()  # the temporary file is removed
