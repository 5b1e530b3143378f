"""safetensors files fastfree writes get the umask's mode, as the JSON beside them does (safetensors 0.8
alone writes 0600: safetensors/safetensors#782)."""

import os
import sys

import pytest
import torch

from fastfree.data.split import Normalization
from fastfree.models import build_model
from fastfree.pool.store import MANIFEST, WEIGHTS, TeacherRecord, save_pool
from fastfree.safetensors_io import atomic_save_readable, save_readable, umask

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture
def mask():
    def set_mask(value: int) -> None:
        os.umask(value)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("value, expected", [(0o022, 0o644), (0o002, 0o664), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, mask, value, expected):
    mask(value)
    assert umask() == value and umask() == value  # reading it leaves it as it was
    save_readable({"a": torch.zeros(2)}, tmp_path / "a.safetensors", metadata={"k": "v"})
    atomic_save_readable({"a": torch.zeros(2)}, tmp_path / "b.safetensors")
    assert _mode(tmp_path / "a.safetensors") == _mode(tmp_path / "b.safetensors") == expected
    (tmp_path / "plain").write_text("x")
    assert _mode(tmp_path / "plain") == expected


def test_a_pool_is_as_readable_as_its_manifest(tmp_path, mask):
    record = TeacherRecord(0, "conv4", 4, 5, 32, (0, 1, 2, 3, 4), 0.5, 0)
    save_pool(tmp_path / "pool", [record], [build_model("conv4", 5, 4, 32).state_dict()], dataset="builtin",
              normalization=Normalization((0.5,) * 3, (0.25,) * 3))
    assert _mode(tmp_path / "pool" / WEIGHTS) == _mode(tmp_path / "pool" / MANIFEST) == 0o644


def test_every_safetensors_write_goes_through_save_readable():
    """No module but safetensors_io calls safetensors' writer (which would write 0600)."""
    import pathlib

    import fastfree

    root = pathlib.Path(fastfree.__file__).parent
    writers = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if "save_file" in p.read_text() and p.name != "safetensors_io.py"]
    assert writers == []


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path, monkeypatch):
    import fastfree.safetensors_io as io

    def broken(*_, **__):
        (tmp_path / f"l.safetensors.{os.getpid()}.tmp").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_save_readable({"a": torch.zeros(1)}, tmp_path / "l.safetensors")
    assert list(tmp_path.iterdir()) == []
