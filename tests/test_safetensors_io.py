"""safetensors files fastfree writes get the umask's mode, as the JSON beside them does (safetensors 0.8
alone writes 0600: safetensors/safetensors#782)."""

import os
import sys

import pytest
import torch

from fastfree.data.split import Normalization
from fastfree.models import build_model
from fastfree.pool.store import MANIFEST, WEIGHTS, TeacherRecord, save_pool
from fastfree.safetensors_io import save_readable, umask

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


@pytest.mark.parametrize("value, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, mask, value, expected):
    mask(value)
    assert umask() == value and umask() == value  # reading it leaves it as it was
    save_readable({"a": torch.zeros(2)}, tmp_path / "a.safetensors", metadata={"k": "v"})
    assert _mode(tmp_path / "a.safetensors") == expected
    (tmp_path / "plain").write_text("x")
    assert _mode(tmp_path / "plain") == expected


def test_a_pool_is_as_readable_as_its_manifest(tmp_path, mask):
    record = TeacherRecord(0, "conv4", 4, 5, 32, (0, 1, 2, 3, 4), 0.5, 0)
    save_pool(tmp_path / "pool", [record], [build_model("conv4", 5, 4, 32).state_dict()], dataset="builtin",
              normalization=Normalization((0.5,) * 3, (0.25,) * 3))
    assert _mode(tmp_path / "pool" / WEIGHTS) == _mode(tmp_path / "pool" / MANIFEST) == 0o644
