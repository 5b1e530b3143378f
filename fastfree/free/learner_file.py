"""A meta-learner as one portable file: safetensors weights + a card saying how to use them.

A run directory's learners (`best_learner.pt`, `checkpoint.pt`) are torch pickles beside the
run's config; to hand a meta-learner to someone else, or keep it after the run directory is gone,
`fastfree export` writes one `.safetensors` file (no pickle, so loading it runs no code). Its
tensors are the learner's state dict, named as `Conv4`'s; its metadata holds, under "fastfree",
JSON {"format": "fastfree-learner/1", "card": {...}, "tensors_sha256": "..."}. The digest covers
every tensor's name, dtype, shape and bytes, so weights changed after export (a failing disk, a
copy gone wrong: safetensors itself checks only that the file is whole) are refused rather than
adapted; a file written before the digest has none and is read as before. The card says the architecture and shape,
the input space (image size, normalisation), the meta-test adaptation its run used (SGD steps,
learning rate), which learner it is and where it came from. `fastfree adapt --learner-file FILE`
and `fastfree eval --learner-file FILE` use it with no run directory, and `load_learner` gives it
back as a module.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from fastfree.data.split import Normalization
from fastfree.errors import FastFreeError
from fastfree.free.selection import last_label
from fastfree.metatest.adapt import functional_template
from fastfree.models.conv4 import Conv4
from fastfree.safetensors_io import atomic_save_readable

FORMAT = "fastfree-learner/1"
SUFFIX = ".safetensors"
WHICH = ("selected", "last")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class LearnerCard:
    """What a learner file says about its learner (all of it needed to adapt it as its run did)."""

    architecture: str  # the learner's network (a meta-learner is a Conv4)
    width: int  # filters per layer
    ways: int  # classifier outputs: the N of the N-way tasks it was meta-trained on
    image_size: int  # side of the square images it takes
    mean: tuple[float, float, float]  # per-channel normalisation of images in [0, 1]
    std: tuple[float, float, float]
    steps: int  # the meta-test adaptation: SGD steps on the support set ...
    lr: float  # ... at this learning rate
    queries: int  # query images per class in the protocol's tasks (BatchNorm uses their statistics)
    which: str  # "selected" (on meta-val) or "last"
    shots: tuple[int, ...] | None  # the shot counts it was selected for; None: the last learner or one pick for all
    iteration: int  # of Algorithm 3 at which it was taken
    meta_val: dict[str, float] | None  # its meta-val accuracy (%) per shot count, where it was selected
    preset: str  # the run's preset
    data: tuple[str, ...]  # the data set(s) of its run: its teachers', meta-val's (one per domain)
    source: str  # the run directory it was exported from
    fastfree_version: str

    def __post_init__(self) -> None:
        # a card may come from a hand-edited file: every field is checked here, so a bad one is refused with
        # its name rather than failing later inside the adaptation
        if self.architecture != "conv4":
            raise FastFreeError(f"learner card: architecture {self.architecture!r} is not a meta-learner's (conv4)")
        for name, least in (("width", 1), ("ways", 1), ("image_size", 16), ("steps", 0), ("queries", 1),
                            ("iteration", 0)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < least:
                raise FastFreeError(f"learner card: {name} must be an integer >= {least}, got {getattr(self, name)!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != 3 or not all(_is_real(v) for v in values):
                raise FastFreeError(f"learner card: {name} must be 3 finite numbers, got {values!r}")
        Normalization(self.mean, self.std)  # std > 0
        if not _is_real(self.lr) or self.lr <= 0:
            raise FastFreeError(f"learner card: lr must be a positive number, got {self.lr!r}")
        if self.which not in WHICH:
            raise FastFreeError(f"learner card: which must be one of {', '.join(WHICH)}, got {self.which!r}")
        if self.shots is not None and (not isinstance(self.shots, tuple) or not self.shots
                                       or not all(_is_int(k) and k >= 1 for k in self.shots)
                                       or list(self.shots) != sorted(set(self.shots))):
            raise FastFreeError(f"learner card: shots must be increasing positive integers, got {self.shots!r}")
        if self.meta_val is not None and (not isinstance(self.meta_val, dict)
                                          or not all(isinstance(k, str) and _is_real(v)
                                                     for k, v in self.meta_val.items())):
            raise FastFreeError(f"learner card: meta_val must map shot counts to accuracies, got {self.meta_val!r}")
        if not isinstance(self.data, tuple) or not self.data or not all(isinstance(d, str) and d for d in self.data):
            raise FastFreeError(f"learner card: data must name the run's data sets, got {self.data!r}")
        for name in ("preset", "source", "fastfree_version"):
            if not isinstance(getattr(self, name), str):
                raise FastFreeError(f"learner card: {name} must be a string, got {getattr(self, name)!r}")

    @property
    def normalization(self) -> Normalization:
        return Normalization(self.mean, self.std)

    def label(self) -> str:
        """How outputs name this learner, e.g. "FREE (selected on meta-val for 1-shot tasks, iteration 100)"."""
        if self.which == "last":
            return last_label(self.iteration)
        what = "" if self.shots is None else f" for {'- and '.join(str(s) for s in self.shots)}-shot tasks"
        return f"FREE (selected on meta-val{what}, iteration {self.iteration})"

    @staticmethod
    def from_dict(raw: dict) -> "LearnerCard":
        names = {f.name for f in fields(LearnerCard)}
        if not isinstance(raw, dict) or set(raw) != names:
            have = set(raw) if isinstance(raw, dict) else set()
            raise FastFreeError(f"learner card: expected the fields {', '.join(sorted(names))}; missing "
                                f"{sorted(names - have)}, unknown {sorted(have - names)}")
        def as_tuple(v):  # JSON has lists; a card holds tuples (a non-list stays as it is, to be refused)
            return tuple(v) if isinstance(v, list) else v

        raw = {**raw, **{k: as_tuple(raw[k]) for k in ("mean", "std", "data", "shots")}}
        raw["mean"], raw["std"] = (tuple(float(v) if _is_real(v) else v for v in raw[k]) if isinstance(raw[k], tuple)
                                   else raw[k] for k in ("mean", "std"))
        return LearnerCard(**raw)


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order (pure)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_learner_file(path: str | os.PathLike, state: dict[str, torch.Tensor], card: LearnerCard) -> Path:
    """Write `state` and `card` to `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise FastFreeError(f"{path}: a learner file is safetensors; name it with the {SUFFIX} suffix")
    if path.is_dir():
        raise FastFreeError(f"{path} is a directory: give the file to write, e.g. {path / ('learner' + SUFFIX)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # one metadata entry: safetensors writes several in no fixed order, and the same learner and card
    # should give the same bytes
    entry = json.dumps({"format": FORMAT, "card": asdict(card), "tensors_sha256": tensors_digest(tensors)},
                       sort_keys=True)
    atomic_save_readable(tensors, path, metadata={"fastfree": entry})
    return path


def read_learner_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], LearnerCard]:
    """The state dict and card of a learner file; refuses files that are not one, naming why."""
    path = Path(path)
    if not path.is_file():
        raise FastFreeError(f"no learner file at {path}: write one with `fastfree export --run RUN_DIR --out {path}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise FastFreeError(f"{path}: not a readable safetensors file ({e})") from e
    if "fastfree" not in metadata:
        raise FastFreeError(f"{path} is a safetensors file but not a fastfree learner file (no card in its metadata): "
                            "export one with `fastfree export --run RUN_DIR`; a teacher's weights go into a pool "
                            "with `fastfree import-pool`")
    try:
        entry = json.loads(metadata["fastfree"])
    except json.JSONDecodeError as e:
        raise FastFreeError(f"{path}: its learner card is not valid JSON ({e}): export it again") from e
    found = entry.get("format") if isinstance(entry, dict) else None
    if found != FORMAT:
        raise FastFreeError(f"{path}: learner file format {found!r}, this fastfree reads {FORMAT!r}: export it again "
                            "with this version")
    try:
        card = LearnerCard.from_dict(entry.get("card"))
    except (TypeError, ValueError) as e:
        raise FastFreeError(f"{path}: its learner card does not parse ({e}): export it again") from e
    except FastFreeError as e:
        raise FastFreeError(f"{path}: {e}: export it again") from e
    recorded = entry.get("tensors_sha256")  # absent in files written before it
    if recorded is not None and recorded != tensors_digest(state):
        raise FastFreeError(f"{path}: its weights do not match the digest written at export (tensors_sha256): they "
                            "changed afterwards (a failing disk, a copy gone wrong, an edit); export it again, or copy "
                            "it again from where it came")
    return state, card


def learner_module(state: dict, width: int, image_size: int, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """A meta-learner (Conv4, its class count read off the state) holding `state`, its BatchNorm on
    batch statistics as the meta-test adapts it (also how `eval --run` and `adapt --run` build a run's)."""
    ways = int(state["classifier.weight"].shape[0])
    learner = functional_template(Conv4(ways, width, image_size)).to(device=device, dtype=dtype)
    learner.load_state_dict(state)
    return learner


def learner_from_state(state: dict[str, torch.Tensor], card: LearnerCard, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> nn.Module:
    """The card's learner holding a learner file's `state`; a state that does not fit the card is refused."""
    head = state.get("classifier.weight")
    if head is None or head.ndim != 2 or int(head.shape[0]) != card.ways:
        raise FastFreeError(f"learner file: its classifier does not have the card's {card.ways} outputs: the file was "
                            "altered after export; export it again")
    try:
        return learner_module(state, card.width, card.image_size, torch.device(device), dtype)
    except RuntimeError as e:  # load_state_dict: missing, unexpected or mis-shaped tensors
        raise FastFreeError(f"learner file: its tensors are not a {card.width}-wide Conv4's at {card.image_size} px "
                            f"({' '.join(str(e).split())}): the file was altered after export; export it "
                            "again") from e


def load_learner(path: str | os.PathLike, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[nn.Module, LearnerCard]:
    """A learner file as (module, card): the meta-learner to adapt, and how (card.steps, card.lr,
    card.normalization, card.image_size)."""
    state, card = read_learner_file(path)
    return learner_from_state(state, card, device, dtype), card


__all__ = ["FORMAT", "SUFFIX", "LearnerCard", "learner_from_state", "learner_module", "load_learner",
           "read_learner_file", "tensors_digest", "write_learner_file"]
