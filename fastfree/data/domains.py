"""Several data sets as the domains of one run (the paper's Table 3: CIFAR-FS + miniImageNet + CUB).

Each domain keeps its own images (uint8, at its own size), class ids and normalisation; the
run sees them through three shared choices:

- image size: the largest domain's. The generator draws at this size, the meta-learner (one
  Conv4) learns at it, and smaller domains' images are resized up to it (bilinear, as the
  authors' "generator at 84 px" multi-domain setting has CIFAR-FS teachers beside 84 px ones);
- normalisation (the meta-learner's input space): that of the first domain at the largest
  size. The meta-learner has one input layer, so one normalisation; the domain that natively
  lives at the learner's size defines it (for the paper's setting: ImageNet's, which two of
  the three domains use). The authors' notes do not say which they used;
- class ids: domain i's ids are shifted by `offsets[i]` (the sum of the class-id ranges of the
  domains before it), so the memory bank and replay mix classes of different domains without
  two domains' classes colliding.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastfree.data.split import FewShotDataset, Normalization
from fastfree.errors import FastFreeError


@dataclass(frozen=True)
class MultiDomainData:
    name: str
    domains: tuple[FewShotDataset, ...]
    labels: tuple[str, ...]  # one unique name per domain, for reports
    offsets: tuple[int, ...]  # added to domain i's class ids
    image_size: int  # the generator's and the meta-learner's
    normalization: Normalization  # the meta-learner's

    def split(self, name: str) -> list:
        return [d.split(name) for d in self.domains]


def _labels(names: list[str]) -> tuple[str, ...]:
    """The data set names, numbered where two domains share one (e.g. built-in data at two sizes)."""
    return tuple(n if names.count(n) == 1 else f"{n}-{i + 1}" for i, n in enumerate(names))


def combine_domains(datasets: list[FewShotDataset]) -> MultiDomainData:
    if len(datasets) < 2:
        raise FastFreeError(f"a multi-domain run needs at least 2 domains, got {len(datasets)}: pass --domain "
                            "once per data set (or run single-domain with --data)")
    size = max(d.image_size for d in datasets)
    if size % 4:
        raise FastFreeError(f"the generator draws at the largest domain's image size, {size} px, which must be a "
                            "multiple of 4 (it upsamples twice by 2): give that domain size=... a multiple of 4")
    offsets, next_id = [], 0
    for d in datasets:
        offsets.append(next_id)
        next_id += 1 + max(max(s.classes) for s in (d.train, d.val, d.test))
    first_at_size = next(d for d in datasets if d.image_size == size)
    labels = _labels([d.name for d in datasets])
    return MultiDomainData("+".join(labels), tuple(datasets), labels, tuple(offsets), size,
                           first_at_size.normalization)
