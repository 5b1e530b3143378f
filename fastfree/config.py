"""Presets: named, complete configurations that the command-line flags override.

- demo:     the built-in data set, a small pool, a small generator, few tasks: minutes on a CPU.
- cifar-fs: the paper's protocol on CIFAR-FS (100 Conv4 teachers, 60 epochs, 1000 FREE
            iterations, 600 tasks); meant to reproduce Table 2's CIFAR-FS rows.
- multi-domain: Table 3: CIFAR-FS (32 px) + miniImageNet + CUB (84 px) pools, the generator and the
            meta-learner at 84 px, 1800 meta-test tasks spread evenly over the three test splits.
- demo-multidomain: a CPU-sized two-domain run: the built-in data at 32 px and at 48 px (another
            seed: other renderings, another normalisation) as two domains; swap in real data with
            `--domain builtin --domain cifar-fs:DIR`.
- cifar-fs-multiarch: Table 4's multi-architecture pool on CIFAR-FS: each of the 100 teachers
            is a Conv4, ResNet-10 or ResNet-18 drawn at random (ResNets trained with SGD), the
            meta-learner stays a Conv4 and FREE runs unchanged (the paper: "without any change").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fastfree.data.sources import DataConfig
from fastfree.errors import FastFreeError
from fastfree.free.config import FreeConfig
from fastfree.free.five import FiveConfig
from fastfree.free.replay import ReplayConfig
from fastfree.metatest.protocol import MetaTestConfig
from fastfree.pool.pretrain import PretrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    data: DataConfig
    pretrain: PretrainConfig
    metatest: MetaTestConfig
    pool_dir: str
    free: FreeConfig
    learner_arch: str = "conv4"
    learner_width: int | None = None
    # a multi-domain preset (Table 3): one data config per domain, each with its own pool trained by
    # `pretrain` (per domain); `data` is then unused by `fastfree train` (fastfree.data.domains)
    domains: tuple[DataConfig, ...] = ()

    def __post_init__(self) -> None:
        if len(self.domains) == 1:
            raise FastFreeError(f"preset {self.name}: a multi-domain preset lists at least 2 domains; use `data` "
                                "for one")


# The demo's FREE, CPU-sized: a small generator, 10 images per class, short replay; same algorithm.
# 60 iterations: at 30 the 1-shot gain over Random stayed inside the intervals on meta-val
# (23.51 vs ~22.0); at 60 it is 24.20 +- 0.85 vs 22.03 +- 0.68 (200 meta-val tasks).
DEMO_FREE = FreeConfig(
    iterations=60, warmup=3, ngf=16, eval_every=10, val_tasks=50, checkpoint_every=5, grid_every=10,
    five=FiveConfig(images_per_class=10),
    replay=ReplayConfig(meta_batch=4, patience=2, max_meta_batches=4),
)

# Two domains share one run: each gets the single-domain demo's budget, 10 teachers and (b=4 teachers
# drawn from 20) about the demo's 240 teacher visits, hence twice its iterations. With half of that
# (5 teachers per domain, 60 iterations) the built-in domain's 1-shot gain over Random was small:
# 23.52 +- 0.76 vs 22.03 +- 0.68 on 200 of its meta-val tasks, run with CIFAR-FS as the other domain.
DEMO_MULTIDOMAIN_FREE = replace(DEMO_FREE, iterations=120)

PRESETS: dict[str, Preset] = {
    "demo": Preset(
        name="demo",
        description="built-in procedural data, 10 Conv4 teachers x 8 epochs, 200 meta-test tasks",
        data=DataConfig(source="builtin", images_per_class=200),
        pretrain=PretrainConfig(teachers=10, epochs=8),
        metatest=MetaTestConfig(tasks=200),
        pool_dir="pools/demo",
        free=DEMO_FREE,
    ),
    "cifar-fs": Preset(
        name="cifar-fs",
        description="the paper's CIFAR-FS protocol: 100 Conv4 teachers x 60 epochs, 600 meta-test tasks",
        data=DataConfig(source="cifar-fs"),
        pretrain=PretrainConfig(),
        metatest=MetaTestConfig(tasks=600),
        pool_dir="pools/cifar-fs",
        free=FreeConfig(val_tasks=600),  # the paper's: 1000 iterations, 19 warm-up, b=4, k=5
    ),
    "cifar-fs-multiarch": Preset(
        name="cifar-fs-multiarch",
        description="Table 4's CIFAR-FS pool: 100 teachers, each Conv4 / ResNet-10 / ResNet-18 at random, "
                    "600 meta-test tasks",
        data=DataConfig(source="cifar-fs"),
        # architectures drawn per teacher as the paper says; ResNets: SGD lr 0.01, momentum 0.9,
        # weight decay 5e-4, x0.2 at epochs 30 and 50 (PretrainConfig's defaults, the authors' MultiStepLR);
        # Conv4: Adam 0.01; 60 epochs for all
        pretrain=PretrainConfig(archs=("conv4", "resnet10", "resnet18")),
        metatest=MetaTestConfig(tasks=600),
        pool_dir="pools/cifar-fs-multiarch",
        free=FreeConfig(val_tasks=600),  # Table 2's protocol: Table 4 changes only the pool
    ),
    "multi-domain": Preset(
        name="multi-domain",
        description="Table 3: CIFAR-FS + miniImageNet + CUB pools (~100 Conv4 teachers in all), generator at "
                    "84 px, 1800 meta-test tasks (600 per domain)",
        data=DataConfig(source="cifar-fs"),
        # 34 teachers per domain: the paper's pool of ~100 models, each from one of the three meta-train
        # sets, sampled uniformly by FREE (so each domain a third of the time). The CUB pool is trained
        # 60 epochs like the others (the authors' single-domain CUB pool: 100).
        domains=(DataConfig(source="cifar-fs"), DataConfig(source="mini-imagenet", image_size=84),
                 DataConfig(source="cub", image_size=84)),
        pretrain=PretrainConfig(teachers=34),
        metatest=MetaTestConfig(tasks=1800),
        pool_dir="pools/multi-domain",
        free=FreeConfig(val_tasks=600),  # "All other configurations remain consistent with the primary results"
    ),
    "demo-multidomain": Preset(
        name="demo-multidomain",
        description="two domains on a CPU: built-in data at 32 px and at 48 px (seed 1), 10 Conv4 teachers x 8 "
                    "epochs each, 120 iterations, 200 meta-test tasks (100 per domain)",
        data=DataConfig(source="builtin", images_per_class=200),
        domains=(DataConfig(source="builtin", images_per_class=200),
                 DataConfig(source="builtin", images_per_class=200, image_size=48, builtin_seed=1)),
        pretrain=PretrainConfig(teachers=10, epochs=8),
        metatest=MetaTestConfig(tasks=200),
        pool_dir="pools/demo-multidomain",
        free=DEMO_MULTIDOMAIN_FREE,  # the demo's CPU-sized FREE, its budget per domain
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise FastFreeError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["PRESETS", "Preset", "get_preset"]
