"""A learner file: the learner's weights and its card round-trip exactly; a file that is not one, or
was altered, is refused with the fix named."""

import json
import os
from dataclasses import asdict, replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fastfree.errors import FastFreeError
from fastfree.free.learner_file import FORMAT, LearnerCard, learner_module, load_learner, read_learner_file, \
    tensors_digest, write_learner_file
from fastfree.metatest.adapt import functional_template
from fastfree.models.conv4 import Conv4
from fastfree.safetensors_io import umask

CARD = LearnerCard(architecture="conv4", width=8, ways=5, image_size=32, mean=(0.5, 0.4, 0.3),
                   std=(0.25, 0.2, 0.3), steps=10, lr=0.01, queries=15, which="selected", shots=(1, 5),
                   iteration=40, meta_val={"1": 31.5, "5": 40.25}, preset="demo", data=("builtin",), source="runs/demo",
                   fastfree_version="0.1.0")


def _state(width: int = 8, ways: int = 5, size: int = 32) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return functional_template(Conv4(ways, width, size)).state_dict()


def test_weights_and_card_round_trip_exactly(tmp_path):
    state = _state()
    path = write_learner_file(tmp_path / "sub" / "l.safetensors", state, CARD)
    got, card = read_learner_file(path)
    assert card == CARD and card.normalization.mean == CARD.mean
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file: any reader gets the card as JSON
        entry = json.loads(f.metadata()["fastfree"])
        assert entry == {"format": FORMAT, "card": json.loads(json.dumps(asdict(CARD))),
                         "tensors_sha256": tensors_digest(state)}
    module, card = load_learner(path, dtype=torch.float64)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    expected = learner_module(state, 8, 32, torch.device("cpu"), torch.float64)
    assert torch.equal(module(x), expected(x))  # BatchNorm on batch statistics, as the meta-test adapts it
    assert not list(tmp_path.rglob("*.tmp"))
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask()  # readable as the files beside it
    again = write_learner_file(tmp_path / "again.safetensors", state, CARD)
    assert again.read_bytes() == path.read_bytes()  # deterministic: no timestamp


def test_labels_say_which_learner():
    assert CARD.label() == "FREE (selected on meta-val for 1- and 5-shot tasks, iteration 40)"
    assert replace(CARD, shots=(5,)).label() == "FREE (selected on meta-val for 5-shot tasks, iteration 40)"
    assert replace(CARD, shots=None).label() == "FREE (selected on meta-val, iteration 40)"
    assert replace(CARD, which="last", shots=None, meta_val=None).label() == "FREE (last, iteration 40)"


@pytest.mark.parametrize("change, message", [
    ({"architecture": "resnet10"}, "not a meta-learner's"),
    ({"width": 0}, "width must be an integer >= 1"),
    ({"ways": True}, "ways must be an integer >= 1"),
    ({"image_size": 8}, "image_size must be an integer >= 16"),
    ({"steps": -1}, "steps must be an integer >= 0"),
    ({"iteration": "40"}, "iteration must be an integer >= 0"),
    ({"mean": ("a", "b", "c")}, "mean must be 3 finite numbers"),
    ({"mean": (None, 0.0, 0.0)}, "mean must be 3 finite numbers"),
    ({"std": (0.2, float("nan"), 0.2)}, "std must be 3 finite numbers"),
    ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
    ({"lr": 0.0}, "lr must be a positive number"),
    ({"lr": float("inf")}, "lr must be a positive number"),
    ({"which": "best"}, "which must be one of selected, last"),
    ({"shots": (0,)}, "shots must be increasing positive integers"),
    ({"shots": (True,)}, "shots must be increasing positive integers"),
    ({"shots": (5, 1)}, "shots must be increasing positive integers"),
    ({"meta_val": [1]}, "meta_val must map shot counts to accuracies"),
    ({"data": ()}, "data must name the run's data sets"),
    ({"source": 3}, "source must be a string"),
])
def test_cards_are_validated(change, message):
    with pytest.raises(FastFreeError, match=message):
        replace(CARD, **change)


def test_files_that_are_not_learner_files_name_the_fix(tmp_path):
    state = _state()
    with pytest.raises(FastFreeError, match="name it with the .safetensors suffix"):
        write_learner_file(tmp_path / "l.pt", state, CARD)
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(FastFreeError, match="is a directory"):
        write_learner_file(tmp_path / "d.safetensors", state, CARD)
    with pytest.raises(FastFreeError, match="fastfree export --run RUN_DIR --out"):
        read_learner_file(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(FastFreeError, match="not a readable safetensors file"):
        read_learner_file(tmp_path / "junk.safetensors")
    save_file(state, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FastFreeError, match="not a fastfree learner file .* import-pool"):
        read_learner_file(tmp_path / "plain.safetensors")
    future = json.dumps({"format": "fastfree-learner/9", "card": asdict(CARD)})
    save_file(state, str(tmp_path / "future.safetensors"), metadata={"fastfree": future})
    with pytest.raises(FastFreeError, match="format 'fastfree-learner/9'"):
        read_learner_file(tmp_path / "future.safetensors")
    card = asdict(CARD)
    del card["queries"]
    save_file(state, str(tmp_path / "old.safetensors"),
              metadata={"fastfree": json.dumps({"format": FORMAT, "card": card})})
    with pytest.raises(FastFreeError, match=r"missing \['queries'\].*export it again"):
        read_learner_file(tmp_path / "old.safetensors")
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"fastfree": "{"})
    with pytest.raises(FastFreeError, match="not valid JSON"):
        read_learner_file(tmp_path / "bad.safetensors")
    card["queries"], card["lr"] = 15, "fast"
    save_file(state, str(tmp_path / "odd.safetensors"),
              metadata={"fastfree": json.dumps({"format": FORMAT, "card": card})})
    with pytest.raises(FastFreeError, match="lr must be a positive number"):
        read_learner_file(tmp_path / "odd.safetensors")


def test_tensors_that_do_not_fit_the_card_are_refused(tmp_path):
    wide = write_learner_file(tmp_path / "wide.safetensors", _state(width=16), CARD)  # the card says 8
    with pytest.raises(FastFreeError, match="not a 8-wide Conv4's at 32 px .*size mismatch.*altered after export"):
        load_learner(wide)
    ten = write_learner_file(tmp_path / "ten.safetensors", _state(ways=10), CARD)
    with pytest.raises(FastFreeError, match="does not have the card's 5 outputs"):
        load_learner(ten)
    state = _state()
    del state["features.0.bias"]
    holed = write_learner_file(tmp_path / "holed.safetensors", state, CARD)
    with pytest.raises(FastFreeError, match="Missing key.*features.0.bias"):
        load_learner(holed)


def test_weights_changed_after_export_are_refused_and_a_file_without_the_digest_still_reads(tmp_path):
    """safetensors checks only that a file is whole: a changed byte inside a tensor reads back silently."""
    state = _state()
    path = write_learner_file(tmp_path / "l.safetensors", state, CARD)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(raw))
    changed = load_file(str(path))  # safetensors alone takes it
    assert any(not torch.equal(changed[k], state[k]) for k in state)
    with pytest.raises(FastFreeError, match="weights do not match the digest written at export.*export it again"):
        read_learner_file(path)
    old = tmp_path / "before-digest.safetensors"  # a file written before the digest was
    save_file(state, str(old), metadata={"fastfree": json.dumps({"format": FORMAT, "card": asdict(CARD)})})
    got, card = read_learner_file(old)
    assert card == CARD and all(torch.equal(got[k], state[k]) for k in state)
    assert tensors_digest(state) != tensors_digest({**state, "classifier.bias": state["classifier.bias"] + 1})
    assert tensors_digest(state) != tensors_digest({**state, "classifier.bias": state["classifier.bias"].double()})
