"""fastfree/read_back.py: a damaged file fastfree wrote is refused with its path and the fix, and a
torch file whose bytes changed inside a tensor is caught by its stored checksums (torch.load is not)."""

import json
import zipfile

import pytest
import torch

from fastfree.errors import FastFreeError
from fastfree.read_back import load_torch, read_json, zip_damage

FIX = "Restore it from a copy"


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"iteration": 3, "learner": {"w": torch.arange(4096, dtype=torch.float32)}}, path)
    return path


def _change_a_tensor_byte(path):
    """Zero 64 bytes in the middle of the largest stored member: torch stores members uncompressed,
    so its bytes appear in the file as they are."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda i: i.file_size)
        data = archive.read(member)
    raw = bytearray(path.read_bytes())
    at = raw.find(data) + len(data) // 2
    raw[at:at + 64] = bytes(64)
    path.write_bytes(bytes(raw))


def test_a_whole_file_loads_as_saved(saved):
    assert zip_damage(saved) is None
    got = load_torch(saved, FIX)
    assert got["iteration"] == 3 and torch.equal(got["learner"]["w"], torch.arange(4096, dtype=torch.float32))


@pytest.mark.parametrize("damage", ["cut short", "empty", "not a torch file", "a byte changed in a tensor"])
def test_a_damaged_torch_file_is_refused_naming_it_and_the_fix(saved, damage):
    if damage == "cut short":
        saved.write_bytes(saved.read_bytes()[:2000])
    elif damage == "empty":
        saved.write_bytes(b"")
    elif damage == "not a torch file":
        saved.write_text("hello\n")
    else:
        _change_a_tensor_byte(saved)
    with pytest.raises(FastFreeError) as e:
        load_torch(saved, FIX)
    message = str(e.value)
    assert str(saved) in message and "is damaged" in message and message.endswith(FIX)
    if damage == "a byte changed in a tensor":
        assert "do not match their stored checksum" in message


def test_torch_load_alone_takes_a_changed_tensor_without_complaint(saved):
    """Why load_torch checks the checksums: without them the damage goes on into the run (torch 2.11, 2.13)."""
    _change_a_tensor_byte(saved)
    w = torch.load(saved, weights_only=True)["learner"]["w"]
    assert not torch.equal(w, torch.arange(4096, dtype=torch.float32))


def test_read_json_refuses_a_damaged_file_and_reads_a_whole_one(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"free": {"iterations": 3}}))
    assert read_json(path, FIX) == {"free": {"iterations": 3}}
    for damaged in (b'{"free": {"iter', b"\xff\xfe\x00garbage"):
        path.write_bytes(damaged)
        with pytest.raises(FastFreeError, match=r"config\.json is damaged \(not valid JSON: .*Restore it from a copy$"):
            read_json(path, FIX)


def test_a_file_saved_without_checksums_loads(tmp_path):
    """torch writes checksum 0 for every member when told not to compute them; that is not damage."""
    from torch.utils.serialization import config

    path = tmp_path / "nocrc.pt"
    before = config.save.compute_crc32
    config.save.compute_crc32 = False  # torch's config module: monkeypatch's undo would delete the setting
    try:
        torch.save({"w": torch.arange(10.0)}, path)
    finally:
        config.save.compute_crc32 = before
    with zipfile.ZipFile(path) as archive:
        assert {i.CRC for i in archive.infolist()} == {0}
    assert zip_damage(path) is None and torch.equal(load_torch(path, FIX)["w"], torch.arange(10.0))
