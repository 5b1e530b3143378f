"""`fastfree eval`: meta-test an initialisation (Table 2's data-free baselines)."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial


from fastfree.commands.common import data_config, load_on_device, progress_bar, run_metadata, setup, write_json
from fastfree.device import resolve_engine
from fastfree.errors import FastFreeError
from fastfree.metatest.initializations import average_init, best_model_init, random_init
from fastfree.metatest.protocol import MetaTestConfig, run_metatest
from fastfree.models import build_model
from fastfree.pool.store import load_pool


def metatest_config(args, base: MetaTestConfig) -> MetaTestConfig:
    fields = {
        "tasks": args.tasks, "ways": args.ways, "shots": tuple(args.shots) if args.shots else None,
        "queries": args.queries, "steps": args.steps, "lr": args.lr, "chunk": args.chunk,
        "seed": args.seed, "engine": args.engine,
    }
    return replace(base, **{k: v for k, v in fields.items() if v is not None})


def run(args) -> dict:
    preset, device, dtype = setup(args)
    dcfg = data_config(args, preset)
    cfg = metatest_config(args, preset.metatest)
    pool_info = None
    pool = None
    if args.method != "random":
        pool = load_pool(args.pool or preset.pool_dir)
    dataset, _ = load_on_device(dcfg, device)
    if pool is not None:
        if pool.dataset != dataset.name:
            raise FastFreeError(
                f"the pool at {pool.path} was trained on {pool.dataset!r} but this evaluation uses "
                f"{dataset.name!r}: pass --data matching the pool, or a pool trained on {dataset.name!r}"
            )
        pool_info = {"path": str(pool.path), "teachers": len(pool)}
    if args.method == "random":
        arch = args.arch or preset.learner_arch
        builder = partial(build_model, arch, cfg.ways, args.width or preset.learner_width, dataset.image_size)
        init = random_init(builder, seed=cfg.seed)
    elif args.method == "average":
        init = average_init(pool.models())
    else:
        init = best_model_init(pool.models(), [r.heldout_accuracy for r in pool.records])
    split = dataset.split(args.split)
    t0 = time.perf_counter()
    engine = resolve_engine(cfg.engine, device)
    with progress_bar(total=cfg.tasks * len(cfg.shots), desc=f"meta-test {args.method} ({engine})",
                      unit="task") as bar:
        results = run_metatest(init, split, dataset.normalization, cfg, dtype, progress=bar.update)
    seconds = time.perf_counter() - t0
    payload = {
        "command": "eval",
        "method": args.method,
        "preset": preset.name,
        "dataset": dataset.name,
        "split": args.split,
        "pool": pool_info,
        "config": cfg.__dict__,
        "engine": engine,
        "dtype": args.dtype,
        "results": [r.summary() for r in results],
        "per_task_accuracy": {str(r.shots): r.accuracies for r in results} if args.per_task else None,
        "seconds": seconds,
        **run_metadata(device),
    }
    print(f"{args.method} on {dataset.name} meta-{args.split} ({cfg.tasks} tasks, {cfg.ways}-way, "
          f"{cfg.queries} queries, {seconds:.1f} s on {payload['device_name']}):")
    for r in results:
        print(f"  {cfg.ways}-way {r.shots}-shot: {r.mean:.2f} +- {r.ci95:.2f} %")
    write_json(args.json, payload)
    return payload
