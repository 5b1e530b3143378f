"""Shared fixtures: tiny data sets made in memory, the real CIFAR-FS path when present.

Also, first of all: without a GPU, the Triton kernels run on CPU through Triton's interpreter.
TRITON_INTERPRET must be set before triton is imported (`triton.jit` decides at decoration
time; `fastfree.kernels` reads it once at import), and any test module may import
`fastfree.kernels` at collection, so it is set here, in the conftest pytest loads before any
test module. With a GPU the variable is left alone, so the GPU tests run the compiled kernels.
Other tests are unaffected: they do not use triton (the CPU inductor backend generates C++).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

TRITON_IMPORTED_EARLY = "triton" in sys.modules
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from fastfree.data.split import CIFAR100_NORM, IMAGENET_NORM, FewShotDataset, ImageSplit  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR_FS = SHARED / "data" / "cifar-fs"


def make_split(name: str, classes: range, per_class: int, size: int = 32, seed: int = 0) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    n = len(classes) * per_class
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.tensor(list(classes)).repeat_interleave(per_class)
    return ImageSplit(name, images, labels)


@pytest.fixture
def tiny_split() -> ImageSplit:
    """10 classes x 10 random images of 32 px."""
    return make_split("tiny/train", range(10), 10)


@pytest.fixture
def tiny_dataset() -> FewShotDataset:
    return FewShotDataset(
        "tiny",
        make_split("tiny/train", range(0, 10), 10, seed=1),
        make_split("tiny/val", range(10, 16), 20, seed=2),
        make_split("tiny/test", range(16, 24), 20, seed=3),
        CIFAR100_NORM,
    )


@pytest.fixture
def small_dataset() -> FewShotDataset:
    """A second domain beside tiny_dataset: 16 px, ImageNet's normalisation, its own class ids 0..15."""
    return FewShotDataset("small", make_split("small/train", range(0, 6), 8, 16, 4),
                          make_split("small/val", range(6, 11), 8, 16, 5),
                          make_split("small/test", range(11, 16), 8, 16, 6), IMAGENET_NORM)


@pytest.fixture
def cifar_fs_root() -> Path:
    if not (CIFAR_FS / "CIFAR_FS_test.pickle").is_file():
        pytest.skip("the real CIFAR-FS (../shared/data/cifar-fs) is not present")
    return CIFAR_FS


# Under pytest-xdist (the README's `-n auto`) each worker is a process of its own: with torch's
# default of one thread per core in every worker, the workers' OpenMP threads would outnumber the
# cores and wait on each other, so each worker gets its share of the cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


_HOLDER = ("import sys\nfrom fastfree.folder_lock import held_until_done, hold\n"
           "with held_until_done('train'):\n    hold(sys.argv[1])\n    print('held', flush=True)\n"
           "    sys.stdin.read()\n")


@pytest.fixture
def holder():
    """Start a process that holds a folder's lock as a running command does (fastfree/folder_lock.py);
    yields the function that starts one."""
    started = []

    def start(folder):
        p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` run first (the demo run is a third of the suite: started last on one
    worker, it would run alone at the end), and tests marked `gpu` skip (not fail) without CUDA."""
    items.sort(key=lambda item: "slow" not in item.keywords)  # stable: otherwise collection order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
