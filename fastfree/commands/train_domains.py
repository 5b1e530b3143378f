"""`fastfree train` with several domains (Table 3): their data configs, data, pools and teachers.

Pools pair with domains by position (the i-th --pool is the i-th domain's); a domain without a
pool gets one pretrained into RUN_DIR/pool-<i>-<domain> with the preset's pretraining config.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from fastfree.commands.common import load_on_device
from fastfree.commands.run_pool import pool_in_run_dir
from fastfree.config import Preset
from fastfree.data.domain_spec import parse_domain
from fastfree.data.domains import MultiDomainData, combine_domains
from fastfree.data.sources import DataConfig
from fastfree.errors import FastFreeError
from fastfree.free.domains import adapt_teacher
from fastfree.pool.fit import check_pool_fits
from fastfree.pool.store import Pool, load_pool


def domain_configs(args, preset: Preset) -> list[DataConfig]:
    """The run's domains ([] for a single-domain run): --domain specs, else the preset's."""
    specs = args.domain or []
    if len(specs) == 1:  # was dropped silently: the run trained on the preset's data instead
        raise FastFreeError(f"one --domain ({specs[0]}): --domain is for two or more data sets; for one use --data "
                            "SOURCE [--data-root DIR]")
    configs = [parse_domain(s, preset.domains) for s in specs] if specs else list(preset.domains)
    if len(configs) < 2:
        if len(args.pool or []) > 1:
            raise FastFreeError(f"{len(args.pool)} --pool given for one data set: a multi-domain run needs one "
                                "--domain per pool (e.g. --domain builtin --domain cifar-fs:DIR)")
        return []
    for flag, value in (("--data", args.data), ("--data-root", args.data_root), ("--image-size", args.image_size),
                        ("--normalization", args.normalization)):
        if value is not None:
            raise FastFreeError(f"{flag} sets one data set, but this run has {len(configs)} domains: put it in each "
                                "--domain SOURCE[:ROOT][,size=N][,norm=NAME] instead")
    common = {"images_per_class": args.images_per_class, "decoder": args.decoder}
    return [replace(c, **{k: v for k, v in common.items() if v is not None}) for c in configs]


def load_domains(configs: list[DataConfig], device: torch.device) -> MultiDomainData:
    return combine_domains([load_on_device(c, device)[0] for c in configs])


def domain_pools(args, preset: Preset, data: MultiDomainData, run_dir: Path, dtype: torch.dtype) -> list[Pool]:
    given = args.pool or []
    if given and len(given) != len(data.domains):
        raise FastFreeError(f"{len(given)} --pool for {len(data.domains)} domains: give one pool per --domain, in "
                            "the same order, or none (each domain's pool is then pretrained into the run directory)")
    pools = []
    for i, (label, dataset) in enumerate(zip(data.labels, data.domains)):
        if given:
            pool = load_pool(given[i])
        else:  # domain i's teachers drawn from the preset's seed + i
            cfg = replace(preset.pretrain, seed=preset.pretrain.seed + i)
            pool = pool_in_run_dir(run_dir / f"pool-{i}-{label}", dataset, cfg, dtype, f"domain {label}")
        check_pool_fits(pool, dataset, f"domain {label}", "give the pools in the order of the --domain flags",
                        "set the domain's size={size} (the pool's)")
        pools.append(pool)
    ways = {label: sorted({r.num_classes for r in p.records}) for label, p in zip(data.labels, pools)}
    if len({w for ws in ways.values() for w in ws}) != 1:
        raise FastFreeError(f"the domains' teachers solve tasks with different numbers of classes ({ways}); FREE "
                            "recovers N-way tasks for one N: pretrain every pool with the same --ways")
    return pools


def domain_teachers(pools: list[Pool], data: MultiDomainData, device: torch.device, dtype: torch.dtype
                    ) -> tuple[list[nn.Module], list[tuple[int, ...]]]:
    """All pools' teachers in the learner's input space, and their classes shifted into one id space.

    A class that is not one of its domain's (an imported model's own, `import-pool` without
    --classes) gets an id past every domain's, so it never shares an id with another domain's class."""
    teachers, classes = [], []
    spare = data.offsets[-1] + 1 + max(max(s.classes) for s in (data.domains[-1].train, data.domains[-1].val,
                                                                 data.domains[-1].test))
    for pool, offset, domain in zip(pools, data.offsets, data.domains):
        own = set(domain.train.classes)
        for record, model in zip(pool.records, pool.models(device)):
            model = model.to(dtype).requires_grad_(False)
            teachers.append(adapt_teacher(model, record.image_size, pool.normalization, data.image_size,
                                          data.normalization).eval())
            shifted = []
            for c in record.classes:
                if c in own:
                    shifted.append(c + offset)
                else:
                    shifted.append(spare)
                    spare += 1
            classes.append(tuple(shifted))
    return teachers, classes
