"""Tests for the built-in procedural data set (fastfree/data/procedural.py)."""

from __future__ import annotations

import re
import time

import pytest
import torch
import torch.nn.functional as F

from fastfree.data.procedural import MAX_CLASSES, build_procedural
from fastfree.data.split import FewShotDataset
from fastfree.errors import FastFreeError

NAME_RE = re.compile(r"^(circle|square|triangle|ring|cross)-(red|yellow|green|blue|purple)-"
                     r"(solid|stripes|checker|dots)$")


@pytest.fixture(scope="module")
def default_build() -> tuple[FewShotDataset, float]:
    """The default data set (100 classes x 600 images) and its build time in seconds."""
    start = time.perf_counter()
    ds = build_procedural()
    return ds, time.perf_counter() - start


@pytest.fixture(scope="module")
def small() -> FewShotDataset:
    return build_procedural(seed=0, images_per_class=12)


def _all_images_of(ds: FewShotDataset, class_id: int) -> torch.Tensor:
    for split in (ds.train, ds.val, ds.test):
        if class_id in split.class_index():
            return split.images[split.class_index()[class_id]]
    raise AssertionError(f"class {class_id} not found")


def test_default_size_shapes_and_build_time(default_build):
    ds, seconds = default_build
    assert seconds < 30, f"default build took {seconds:.1f} s"  # loose sanity bound, not a benchmark
    assert ds.name == "builtin" and ds.image_size == 32
    for split, n_classes in ((ds.train, 64), (ds.val, 16), (ds.test, 20)):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert tuple(split.images.shape) == (n_classes * 600, 3, 32, 32)
        assert len(split.classes) == n_classes
        assert set(split.counts().values()) == {600}
    assert (ds.train.name, ds.val.name, ds.test.name) == ("builtin/train", "builtin/val", "builtin/test")


def test_splits_disjoint_and_cover_all_classes(small):
    tr, va, te = (set(s.classes) for s in (small.train, small.val, small.test))
    assert (len(tr), len(va), len(te)) == (64, 16, 20)
    assert not (tr & va or tr & te or va & te)
    assert tr | va | te == set(range(100))
    names = {}
    for split in (small.train, small.val, small.test):
        assert set(split.class_names) == set(split.classes)
        names.update(split.class_names)
    assert all(NAME_RE.match(n) for n in names.values()), names
    assert len(set(names.values())) == 100  # every factor combination exactly once


def test_normalization_is_train_mean_std(small):
    x = small.train.images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    assert torch.allclose(torch.tensor(small.normalization.mean, dtype=torch.float64), mean, atol=1e-4)
    assert torch.allclose(torch.tensor(small.normalization.std, dtype=torch.float64), std, atol=1e-4)
    assert all(round(v, 4) == v for v in small.normalization.mean + small.normalization.std)


def test_images_are_not_degenerate(small):
    x = small.train.images.to(torch.float32)
    assert (x.flatten(1).std(dim=1) > 5).all()  # no flat images
    assert x.min() == 0 and x.max() == 255  # the full range is used somewhere


@pytest.mark.parametrize("num_classes, sizes", [(15, (5, 5, 5)), (20, (10, 5, 5)), (50, (32, 8, 10))])
def test_other_class_counts_and_image_size(num_classes, sizes):
    ds = build_procedural(seed=3, images_per_class=4, image_size=24, num_classes=num_classes)
    assert tuple(len(s.classes) for s in (ds.train, ds.val, ds.test)) == sizes
    assert set(ds.train.classes) | set(ds.val.classes) | set(ds.test.classes) == set(range(num_classes))
    assert tuple(ds.train.images.shape[1:]) == (3, 24, 24)


def test_class_images_do_not_depend_on_num_classes():
    a = build_procedural(seed=5, images_per_class=6, num_classes=20)
    b = build_procedural(seed=5, images_per_class=6, num_classes=100)
    for c in range(20):
        assert torch.equal(_all_images_of(a, c), _all_images_of(b, c))


def test_deterministic_per_seed(small):
    again = build_procedural(seed=0, images_per_class=12)
    for s1, s2 in zip((small.train, small.val, small.test), (again.train, again.val, again.test)):
        assert torch.equal(s1.images, s2.images) and torch.equal(s1.labels, s2.labels)
        assert s1.class_names == s2.class_names
    assert small.normalization == again.normalization
    other = build_procedural(seed=1, images_per_class=12)
    assert not torch.equal(_all_images_of(small, 0), _all_images_of(other, 0))
    assert set(other.train.classes) != set(small.train.classes)  # the split permutation is seeded too


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 14}, "num_classes must be at least 15"),
        ({"num_classes": MAX_CLASSES + 1}, f"num_classes must be at most {MAX_CLASSES}"),
        ({"images_per_class": 1}, "images_per_class must be at least 2"),
        ({"image_size": 15}, "image_size must be at least 16"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(FastFreeError, match=match):
        build_procedural(**kwargs)


def _five_way(ds: FewShotDataset):
    """First 5 meta-train classes; first 80% of each class's images to train, last 20% held out."""
    idx = ds.train.class_index()
    train_x, train_y, test_x, test_y = [], [], [], []
    for label, c in enumerate(ds.train.classes[:5]):
        ii = idx[c]
        k = int(0.8 * len(ii))
        train_x.append(ds.train.images[ii[:k]])
        test_x.append(ds.train.images[ii[k:]])
        train_y += [label] * k
        test_y += [label] * (len(ii) - k)
    norm = ds.normalization
    return (norm(torch.cat(train_x)), torch.tensor(train_y), norm(torch.cat(test_x)), torch.tensor(test_y))


def test_learnable_by_cnn_but_not_by_mean_colour(default_build):
    from fastfree.models import Conv4

    ds, _ = default_build
    xtr, ytr, xte, yte = _five_way(ds)

    # Shortcut baseline: nearest class mean of the whole image's mean RGB.
    ftr, fte = xtr.mean(dim=(2, 3)), xte.mean(dim=(2, 3))
    centroids = torch.stack([ftr[ytr == k].mean(0) for k in range(5)])
    colour_acc = (torch.cdist(fte, centroids).argmin(1) == yte).float().mean().item()

    # A Conv4 trained briefly (observed: ~0.6 after 1 epoch, ~0.85 after 4). One thread: on a
    # shared 2-core machine, 2 OpenMP threads competing with other processes ran 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = Conv4(num_classes=5, width=32, image_size=32)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(0)
        for _ in range(4):
            model.train()
            perm = torch.randperm(len(xtr), generator=gen)
            for start in range(0, len(xtr), 64):
                b = perm[start:start + 64]
                loss = F.cross_entropy(model(xtr[b]), ytr[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            cnn_acc = (model(xte).argmax(1) == yte).float().mean().item()
    finally:
        torch.set_num_threads(threads)

    assert cnn_acc > 0.5, f"Conv4 held-out accuracy {cnn_acc:.3f}: the data set is not learnable"
    assert colour_acc < 0.45, f"mean-colour accuracy {colour_acc:.3f}: classes are separable by colour alone"
    assert cnn_acc > colour_acc + 0.25, f"CNN {cnn_acc:.3f} vs mean colour {colour_acc:.3f}"
