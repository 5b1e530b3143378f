"""The in-memory form of every data set: uint8 images on a device plus global class ids.

Images stay uint8 (4x smaller than float) wherever they live and are normalised on the
device only when a batch is drawn (see `Normalization`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastfree.errors import FastFreeError


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std applied to images scaled to [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise FastFreeError(f"normalisation needs 3 means and 3 stds, got {self.mean} / {self.std}")
        if min(self.std) <= 0:
            raise FastFreeError(f"normalisation std must be positive, got {self.std}")

    def __call__(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> normalised float [..., 3, H, W] on the images' device."""
        return self.unit(images.to(dtype) / 255.0)

    def unit(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (e.g. a generator's output) -> normalised, same dtype."""
        mean, std = self.tensors(images.device, images.dtype)
        return (images - mean) / std

    def tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as [3, 1, 1] tensors. Code captured in a CUDA graph makes them once, before
        the capture: creating them copies host to device, which a capture refuses."""
        return (torch.tensor(self.mean, dtype=dtype, device=device).view(3, 1, 1),
                torch.tensor(self.std, dtype=dtype, device=device).view(3, 1, 1))

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @staticmethod
    def from_dict(d: dict) -> "Normalization":
        return Normalization(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


CIFAR100_NORM = Normalization((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
IMAGENET_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ImageSplit:
    """One split (meta-train, meta-val or meta-test) of a data set.

    images: uint8 [N, 3, H, W]; labels: int64 [N], global class ids of the data set.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise FastFreeError(
                f"{self.name}: images must be uint8 [N, 3, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise FastFreeError(
                f"{self.name}: {self.images.shape[0]} images but {tuple(self.labels.shape)} labels"
            )
        if self.images.shape[0] == 0:
            raise FastFreeError(f"{self.name}: the split is empty")

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def classes(self) -> list[int]:
        """Sorted global class ids present in this split."""
        return [int(c) for c in torch.unique(self.labels).tolist()]

    def class_index(self) -> dict[int, torch.Tensor]:
        """class id -> int64 indices of its images, in stored order (computed once)."""
        cached = self.__dict__.get("_class_index")
        if cached is None:
            order = torch.argsort(self.labels.cpu(), stable=True)
            sorted_labels = self.labels.cpu()[order]
            ids, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
            cached = {
                int(c): idx.to(self.device)
                for c, idx in zip(ids.tolist(), torch.split(order, counts.tolist()))
            }
            object.__setattr__(self, "_class_index", cached)
        return cached

    def counts(self) -> dict[int, int]:
        return {c: int(idx.numel()) for c, idx in self.class_index().items()}

    def to(self, device: torch.device | str) -> "ImageSplit":
        return ImageSplit(self.name, self.images.to(device), self.labels.to(device), dict(self.class_names))


@dataclass(frozen=True)
class FewShotDataset:
    """A meta-learning data set: disjoint meta-train / meta-val / meta-test class splits."""

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    normalization: Normalization

    def __post_init__(self) -> None:
        sizes = {s.image_size for s in (self.train, self.val, self.test)}
        if len(sizes) != 1:
            raise FastFreeError(f"{self.name}: splits have different image sizes {sorted(sizes)}")
        tr, va, te = (set(s.classes) for s in (self.train, self.val, self.test))
        if tr & va or tr & te or va & te:
            raise FastFreeError(
                f"{self.name}: meta-train/val/test must have disjoint classes; shared: "
                f"{sorted((tr & va) | (tr & te) | (va & te))[:10]}"
            )

    @property
    def image_size(self) -> int:
        return self.train.image_size

    def split(self, name: str) -> ImageSplit:
        aliases = {"train": self.train, "val": self.val, "test": self.test}
        if name not in aliases:
            raise FastFreeError(f"unknown split {name!r}: use one of train, val, test")
        return aliases[name]

    def to(self, device: torch.device | str) -> "FewShotDataset":
        return FewShotDataset(
            self.name, self.train.to(device), self.val.to(device), self.test.to(device), self.normalization
        )
