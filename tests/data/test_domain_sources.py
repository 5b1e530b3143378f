"""`--domain` specs, and miniImageNet / CUB read in the authors' folder + CSV layout (tiny fixtures)."""

import pytest

from fastfree.data.domain_spec import parse_domain
from fastfree.data.sources import DataConfig, load_dataset
from fastfree.data.split import IMAGENET_NORM
from fastfree.errors import FastFreeError

pytest.importorskip("PIL")
from tests.data.test_folder_layout import CLASS_IDS, PER_CLASS, make_dataset  # noqa: E402


def test_specs_parse_into_data_configs():
    assert parse_domain("builtin") == DataConfig(source="builtin")
    assert parse_domain("builtin,size=48,seed=1,images=20") == DataConfig(
        source="builtin", image_size=48, builtin_seed=1, images_per_class=20)
    assert parse_domain("cifar-fs:/d/c") == DataConfig(source="cifar-fs", root="/d/c")
    assert parse_domain("mini-imagenet:/d/m") == DataConfig(source="mini-imagenet", root="/d/m", image_size=84)
    base = (DataConfig(source="cub", image_size=64, decoder="pil"),)  # a preset's domain keeps its settings
    assert parse_domain("cub:/d/cub", base) == DataConfig(source="cub", root="/d/cub", image_size=64, decoder="pil")


@pytest.mark.parametrize("spec, message", [
    ("imagenet:/x", "unknown data source 'imagenet'"),
    ("builtin,size", "bad option 'size'"),
    ("builtin,colour=2", "bad option"),
    ("builtin,size=big", "size must be an integer"),
    ("cub:/x,norm=cifar100", "ImageNet's mean/std"),
    ("cifar-fs:/x,size=48", "CIFAR-FS images are 32 x 32 and used as they are, not at 48 px"),  # was ignored
])
def test_bad_specs_name_the_fix(spec, message):
    with pytest.raises(FastFreeError, match=message):
        parse_domain(spec)


def test_a_domain_without_data_names_the_flag_and_variable(monkeypatch):
    monkeypatch.delenv("FASTFREE_CUB", raising=False)
    with pytest.raises(FastFreeError, match="FASTFREE_CUB"):
        load_dataset(parse_domain("cub"))


@pytest.mark.parametrize("source", ["mini-imagenet", "cub"])
def test_mini_imagenet_and_cub_read_the_folder_layout(tmp_path, source, monkeypatch):
    make_dataset(tmp_path / "d", src_size=(30, 20))
    monkeypatch.setenv("FASTFREE_MINI_IMAGENET" if source == "mini-imagenet" else "FASTFREE_CUB",
                       str(tmp_path / "d"))
    ds = load_dataset(parse_domain(f"{source},size=20"))
    assert ds.name == source and ds.normalization == IMAGENET_NORM and ds.image_size == 20
    assert ds.train.classes == sorted(CLASS_IDS[c] for c in ("n0300", "n0100"))
    assert ds.test.images.shape == (2 * PER_CLASS, 3, 20, 20)
