"""Models trained elsewhere, as a fastfree pool: the data-free setting's usual case (published
classifiers, no training data).

A model file holds one classifier's weights: safetensors, or a torch checkpoint (`.pt`, `.pth`,
`.bin`; read with `weights_only=True`, so no code in it runs) holding a state dict, possibly under
"state_dict" / "model" / "model_state_dict" / "teacher" (the authors' tools.py saves each teacher as
{"teacher": state dict, "specific": class indices}) and with DataParallel's "module." prefix. Two layouts
are understood:

- fastfree's own (`features.*` / `classifier.*` for Conv4, `conv1` / `layer1..4` / `classifier`
  for the ResNets): a model of `fastfree.models` saved with `state_dict()`;
- the FREE authors' Conv-4 (`trunk.{0..3}.C` / `.BN`, `trunk.5` the linear layer; their network.py,
  whose blocks also register every layer a second time as `trunk.i.trunk.j`, the same tensors):
  the same network as fastfree's Conv4 (Conv3x3 with bias -> BN -> ReLU -> MaxPool2, four times,
  then Linear), so its weights map one to one. The authors' ResNets are not the same network
  (no ReLU after their stem), so they are refused rather than imported into a different model.

Width and class count are read off the weights; every state dict must then load strictly into
`build_model(arch, classes, width, image_size)`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fastfree.errors import FastFreeError
from fastfree.models import ARCHITECTURES, build_model

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "teacher")
_AUTHORS_CONV4 = re.compile(r"^trunk\.(\d+)\.(C|BN)\.(.+)$")
_AUTHORS_DUPLICATE = re.compile(r"^trunk\.\d+\.trunk\.\d+\.")


def _natural(path: Path) -> list:
    """Name order with numbers compared as numbers: model_2 before model_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def model_files(paths: list[str | Path]) -> list[Path]:
    """The model files named, a folder standing for its model files in name order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MODEL_SUFFIXES),
                           key=_natural)
            if not found:
                raise FastFreeError(f"{p} holds no model files ({', '.join(MODEL_SUFFIXES)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FastFreeError(f"no such model file or folder: {p}")
    resolved = [p.resolve() for p in out]  # one file under two spellings (a/x.pt, ./a/x.pt, a folder and its file)
    if len(set(resolved)) != len(resolved):
        twice = next(p for p, r in zip(out, resolved) if resolved.count(r) > 1)
        raise FastFreeError(f"a model file is named twice ({twice}): each file is one teacher")
    return out


def _tensors_only(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if key in obj and isinstance(obj[key], dict):
                return _tensors_only(obj[key], path)
    kind = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else type(obj).__name__
    raise FastFreeError(f"{path}: expected a state dict (name -> tensor), possibly under "
                        f"{' / '.join(_WRAPPERS)}, found {kind}: save the model with `torch.save(model.state_dict(), "
                        f"path)` or safetensors")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """One model file's tensors on the CPU, unwrapped and without DataParallel's 'module.' prefix."""
    if path.suffix.lower() == ".safetensors":
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise FastFreeError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for foreign or unsafe pickles
            raise FastFreeError(f"{path}: cannot be read as a torch checkpoint with weights_only=True ({e}); "
                                "fastfree reads weights only, never pickled code: save a state dict") from e
        sd = _tensors_only(obj, path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def to_fastfree_layout(sd: dict[str, torch.Tensor], arch: str, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in fastfree's names, the layout it came in: 'fastfree' or 'authors-conv4')."""
    if any(_AUTHORS_CONV4.match(k) for k in sd):
        if arch != "conv4":
            raise FastFreeError(f"{path} is in the FREE authors' Conv-4 layout (trunk.i.C / trunk.i.BN): import it "
                                f"with --arch conv4, not {arch}")
        out = {}
        for k, v in sd.items():
            m = _AUTHORS_CONV4.match(k)
            if m:  # block i: its convolution is fastfree's features.4i, its BatchNorm features.4i+1
                out[f"features.{4 * int(m.group(1)) + (m.group(2) == 'BN')}.{m.group(3)}"] = v
            elif k.startswith("trunk.5."):  # after the four blocks and the Flatten
                out[f"classifier.{k[len('trunk.5.'):]}"] = v
            elif not _AUTHORS_DUPLICATE.match(k):
                raise FastFreeError(f"{path}: unexpected tensor {k!r} for the FREE authors' Conv-4 (4 blocks, then "
                                    "trunk.5 the linear layer)")
        return out, "authors-conv4"
    if "trunk.0.weight" in sd or "trunk.1.running_mean" in sd:
        raise FastFreeError(f"{path} looks like the FREE authors' ResNet (trunk.*): it has no ReLU after its stem, "
                            "so it is not fastfree's ResNet and cannot be imported as one")
    return sd, "fastfree"


def shape_of(sd: dict[str, torch.Tensor], arch: str, path: Path) -> tuple[int, int]:
    """(width, classes) read off the weights: the first convolution's filters, the classifier's rows."""
    first = "features.0.weight" if arch == "conv4" else "conv1.weight"
    if first not in sd or "classifier.weight" not in sd or sd[first].dim() != 4 or sd["classifier.weight"].dim() != 2:
        raise FastFreeError(f"{path}: no {first} / classifier.weight among its tensors ({sorted(sd)[:4]} ...): not a "
                            f"fastfree {arch} state dict nor the authors' Conv-4; pass the --arch it was built as")
    return int(sd[first].shape[0]), int(sd["classifier.weight"].shape[0])


def import_model(path: Path, arch: str, image_size: int) -> tuple[dict[str, torch.Tensor], int, int, str]:
    """(fastfree state dict, width, classes, source layout) of one model file, checked by loading it."""
    if arch not in ARCHITECTURES:
        raise FastFreeError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    sd, layout = to_fastfree_layout(read_state_dict(path), arch, path)
    odd = [k for k, v in sd.items() if not v.is_floating_point() and not k.endswith("num_batches_tracked")]
    if odd:  # load_state_dict would cast them silently
        raise FastFreeError(f"{path}: {len(odd)} tensors are not floating point ({odd[0]}: {sd[odd[0]].dtype}): "
                            "weights and BatchNorm statistics must be float tensors")
    width, classes = shape_of(sd, arch, path)
    model = build_model(arch, classes, width, image_size)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = " ".join(str(e).strip().splitlines()[:3])
        raise FastFreeError(f"{path}: its weights do not fit a {arch} of width {width}, {classes} classes, "
                            f"{image_size} px images ({lines}); check --arch and the data's --image-size") from e
    # the model's own tensors (float32, contiguous), so the pool's file never depends on how it was saved
    return {k: v.detach().float().contiguous() if v.is_floating_point() else v.detach().contiguous()
            for k, v in model.state_dict().items()}, width, classes, layout


__all__ = ["MODEL_SUFFIXES", "import_model", "model_files", "read_state_dict", "shape_of", "to_fastfree_layout"]
