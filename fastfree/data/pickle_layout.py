"""CIFAR-FS in the MetaOptNet / RFS pickle layout.

A folder holds ``CIFAR_FS_{train,val,test}.pickle``; each is a dict whose ``data`` is a numpy
uint8 array ``[N, H, W, 3]`` (HWC) and whose ``labels`` is a list (or integer array) of N
CIFAR-100 fine-label ids. An optional ``classes.json`` names the ids (``fine_label_names``).

A pickle can run arbitrary code when loaded, so the files are read with a restricted
unpickler that resolves only the few numpy globals an array needs; anything else is refused.
"""

from __future__ import annotations

import importlib
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastfree.data.split import CIFAR100_NORM, FewShotDataset, ImageSplit
from fastfree.errors import FastFreeError

SPLIT_FILES = {
    "train": "CIFAR_FS_train.pickle",
    "val": "CIFAR_FS_val.pickle",
    "test": "CIFAR_FS_test.pickle",
}
CLASSES_FILE = "classes.json"

# (module, name) pairs a plain numpy-array pickle needs; nothing else is resolved.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }
)


def _resolve_allowed(module: str, name: str) -> Any:
    # numpy 2 renamed numpy.core to numpy._core (the old name warns); numpy 1 has only the old one.
    if module.startswith("numpy.core.") or module.startswith("numpy._core."):
        suffix = module.split(".", 2)[2]
        for candidate in (f"numpy._core.{suffix}", f"numpy.core.{suffix}"):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise FastFreeError(f"this numpy ({np.__version__}) has no {module}.{name}: upgrade numpy")
    return getattr(importlib.import_module(module), name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the numpy globals needed to rebuild arrays, dtypes and numpy scalars."""

    def __init__(self, file, source: Path) -> None:
        # latin1 lets Python-2 era pickles (the original MetaOptNet files) load their array bytes.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _resolve_allowed(module, name)
        hint = ""
        if module.split(".")[0] in ("numpy", "_codecs", "codecs"):
            # Harmless in itself, but outside the allow-list: numpy arrays pickled with protocol 5
            # use numpy._core.numeric._frombuffer, and Python 3 bytes with protocol <= 2 use _codecs.
            hint = " (numpy data saved with pickle protocol 5, or 0-2 under Python 3, needs this: "
            hint += "re-save it with pickle.dump(obj, f, protocol=4))"
        raise FastFreeError(
            f"{self._source}: refused to load the global {module}.{name}: this is not a plain data "
            "pickle (only numpy arrays, dtypes, lists, dicts and ints are allowed, and a pickle can "
            "run code when loaded). Do not load it from an untrusted source; re-export the data as "
            "numpy arrays: a dict with 'data' (uint8 [N, H, W, 3]) and 'labels' (list of ints), "
            f"pickle protocol 4{hint}."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise FastFreeError(
            f"{self._source}: the pickle uses persistent ids, so it is not a plain data pickle; "
            "re-export the data as numpy arrays: a dict with 'data' and 'labels'"
        )


def _validate_split_dict(obj: object, path: Path) -> dict:
    fix = "the file must hold a dict with 'data' (numpy uint8 [N, H, W, 3]) and 'labels' (N ints)"
    if not isinstance(obj, dict):
        raise FastFreeError(f"{path}: expected a dict, got {type(obj).__name__}; {fix}")
    missing = [k for k in ("data", "labels") if k not in obj]
    if missing:
        keys = sorted(str(k) for k in obj.keys())[:10]
        raise FastFreeError(f"{path}: the dict lacks key(s) {missing} (it has {keys}); {fix}")
    data = obj["data"]
    if not isinstance(data, np.ndarray):
        raise FastFreeError(f"{path}: 'data' is a {type(data).__name__}, not a numpy array; {fix}")
    if data.dtype != np.uint8:
        raise FastFreeError(
            f"{path}: 'data' has dtype {data.dtype}, expected uint8; re-export the images as uint8 "
            "0-255 (e.g. array.astype(numpy.uint8))"
        )
    if data.ndim != 4 or data.shape[-1] != 3:
        raise FastFreeError(
            f"{path}: 'data' has shape {tuple(data.shape)}, expected [N, H, W, 3] (HWC, RGB); {fix}"
        )
    if data.shape[1] != data.shape[2]:
        raise FastFreeError(
            f"{path}: images are {data.shape[1]}x{data.shape[2]} (H x W), not square; fastfree's networks take "
            "square images: resize or crop them to one size (CIFAR-FS is 32x32)"
        )
    n = data.shape[0]
    labels = obj["labels"]
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise FastFreeError(
                f"{path}: 'labels' is a {labels.dtype} array of shape {tuple(labels.shape)}, "
                f"expected 1-D integers; {fix}"
            )
    elif isinstance(labels, (list, tuple)):
        bad = next(
            (
                (i, v)
                for i, v in enumerate(labels)
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
            ),
            None,
        )
        if bad is not None:
            raise FastFreeError(
                f"{path}: 'labels'[{bad[0]}] is {bad[1]!r} ({type(bad[1]).__name__}), not an int; {fix}"
            )
    else:
        raise FastFreeError(f"{path}: 'labels' is a {type(labels).__name__}, not a list of ints; {fix}")
    if len(labels) != n:
        raise FastFreeError(f"{path}: {n} images but {len(labels)} labels; {fix}")
    if n == 0:
        raise FastFreeError(f"{path}: the split holds no images; {fix}")
    return obj


def restricted_load(path: str | Path, validate: bool = True) -> object:
    """Unpickle ``path`` allowing only numpy arrays, dtypes, numpy scalars and plain containers.

    With ``validate`` (the default) the result must be a split dict (``data`` uint8
    ``[N, H, W, 3]``, ``labels`` N ints), else FastFreeError. Refused globals, missing files and
    truncated or corrupt pickles all raise FastFreeError.
    """
    path = Path(path)
    if not path.is_file():
        raise FastFreeError(
            f"{path}: file not found; a CIFAR-FS folder must contain "
            f"{', '.join(SPLIT_FILES.values())} (and optionally {CLASSES_FILE})"
        )
    try:
        with path.open("rb") as f:
            obj = _NumpyOnlyUnpickler(f, path).load()
    except FastFreeError:
        raise
    except (pickle.UnpicklingError, EOFError) as e:
        raise FastFreeError(
            f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e}); re-download or re-export it"
        ) from e
    except OSError as e:
        raise FastFreeError(f"{path}: cannot read the file ({e}); check its permissions") from e
    except Exception as e:
        # numpy's _reconstruct/__setstate__ and pickle's framing complain about damaged payloads in many
        # ways (ValueError, TypeError, OverflowError, SystemError, ...; found by fuzzing single bytes)
        raise FastFreeError(
            f"{path}: cannot rebuild the pickled data ({type(e).__name__}: {e}); the file is corrupt "
            "or not in the CIFAR-FS pickle layout: re-download or re-export it"
        ) from e
    if validate:
        _validate_split_dict(obj, path)
    return obj


def _read_class_names(root: Path) -> tuple[list[str] | None, dict[str, list[str]] | None]:
    path = root / CLASSES_FILE
    if not path.is_file():
        return None, None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FastFreeError(f"{path}: cannot parse ({e}); fix the JSON or delete the file") from e
    names = meta.get("fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FastFreeError(
            f"{path}: expected a JSON object with 'fine_label_names', a list of class-name strings "
            "in id order; fix the file or delete it (classes are then named class-<id>)"
        )
    splits = meta.get("splits")
    if splits is not None and not (
        isinstance(splits, dict)
        and all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in splits.values())
    ):
        raise FastFreeError(
            f"{path}: 'splits' must map split names to lists of class names; fix or remove it"
        )
    return names, splits


def load_cifar_fs(root: str | Path) -> FewShotDataset:
    """Load CIFAR-FS from a folder in the MetaOptNet pickle layout as uint8 CHW CPU tensors."""
    root = Path(root)
    if not root.is_dir():
        raise FastFreeError(
            f"CIFAR-FS folder {root} does not exist; pass the folder that contains "
            f"{', '.join(SPLIT_FILES.values())}"
        )
    missing = [f for f in SPLIT_FILES.values() if not (root / f).is_file()]
    if missing:
        # a common slip is passing the folder above the data set (data/ for data/cifar-fs/): name the one to pass
        hint = ""
        if len(missing) == len(SPLIT_FILES):
            try:
                inside = [d for d in sorted(root.iterdir()) if d.is_dir()
                          and all((d / f).is_file() for f in SPLIT_FILES.values())]
            except OSError:  # an unreadable folder: the error below still names what is missing
                inside = []
            hint = f"; {inside[0]} has them: pass that folder" if inside else ""
        raise FastFreeError(
            f"{root}: missing {', '.join(missing)}; a CIFAR-FS folder must contain "
            f"{', '.join(SPLIT_FILES.values())} (and optionally {CLASSES_FILE} with the class names){hint}"
        )
    names, split_classes = _read_class_names(root)

    splits: dict[str, ImageSplit] = {}
    for split, fname in SPLIT_FILES.items():
        path = root / fname
        obj = restricted_load(path)
        data: np.ndarray = obj["data"]
        labels = np.asarray(obj["labels"], dtype=np.int64)
        if labels.min() < 0:
            raise FastFreeError(f"{path}: negative class id {int(labels.min())}; labels must be >= 0")
        ids = [int(c) for c in np.unique(labels)]
        if names is not None and ids[-1] >= len(names):
            raise FastFreeError(
                f"{path}: class id {ids[-1]} but {root / CLASSES_FILE} names only {len(names)} "
                "classes; fix fine_label_names or the labels"
            )
        class_names = {c: (names[c] if names is not None else f"class-{c}") for c in ids}
        if split_classes is not None and split in split_classes:
            expected, found = set(split_classes[split]), set(class_names.values())
            if expected != found:
                raise FastFreeError(
                    f"{path}: its classes do not match the {split!r} list in {root / CLASSES_FILE} "
                    f"(only in the pickle: {sorted(found - expected)[:5]}, only in the list: "
                    f"{sorted(expected - found)[:5]}); use matching files"
                )
        # HWC -> CHW in one contiguous copy done by torch (multi-threaded). The copy never writes
        # to the numpy array, so torch's warning about a read-only source does not apply.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*")
            images = torch.from_numpy(data)
        images = images.permute(0, 3, 1, 2).contiguous()
        splits[split] = ImageSplit(split, images, torch.from_numpy(labels), class_names)
        del obj, data
    return FewShotDataset("cifar-fs", splits["train"], splits["val"], splits["test"], CIFAR100_NORM)
