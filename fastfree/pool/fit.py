"""Does a pool fit the data it is used with? Its teachers must have learned from that data set, at
its image size, in its input space (normalisation).

A pool records all three (manifest.json); the data flags of a later command may differ from the
ones it was pretrained with (`--image-size`, `--normalization`), and a mismatch would otherwise
surface as a shape error deep inside a forward, or not at all (a wrong normalisation only feeds
the teachers images they were not trained on). `fix_size` says how to change the image size in
the caller's words (a flag, or a domain's size=...).
"""

from __future__ import annotations

from fastfree.data.split import FewShotDataset
from fastfree.errors import FastFreeError
from fastfree.pool.store import Pool


def check_pool_fits(pool: Pool, dataset: FewShotDataset, what: str, fix_data: str, fix_size: str) -> None:
    """Raise naming the first mismatch between `pool` and `dataset` (`what`: "this run", "domain X")."""
    if pool.dataset != dataset.name:
        raise FastFreeError(f"the pool at {pool.path} was trained on {pool.dataset!r} but {what} uses "
                            f"{dataset.name!r}: {fix_data}")
    sizes = sorted({r.image_size for r in pool.records})
    if sizes != [dataset.image_size]:
        px = " and ".join(map(str, sizes))
        raise FastFreeError(f"the pool at {pool.path} holds teachers of {px} px but {what}'s images are "
                            f"{dataset.image_size} px: {fix_size.format(size=sizes[0])}, or use a pool "
                            f"trained at {dataset.image_size} px")
    if pool.normalization != dataset.normalization:
        raise FastFreeError(f"the pool at {pool.path} was trained with another normalisation (mean "
                            f"{tuple(pool.normalization.mean)}, std {tuple(pool.normalization.std)}) than {what}'s "
                            f"data (mean {tuple(dataset.normalization.mean)}, std {tuple(dataset.normalization.std)}): "
                            "use the data the pool was trained with (built-in data: its --images-per-class; "
                            "folder data: its --normalization; a domain: its norm=...)")


__all__ = ["check_pool_fits"]
