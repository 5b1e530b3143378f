"""`fastfree eval`: meta-test an initialisation: Table 2's data-free baselines (random, average,
best-model) or, with --run, a `fastfree train` run's meta-learner (or a Random learner of its
shape) in the input space the run trained it in; with --learner-file, an exported meta-learner
(`fastfree export`) in its input space on the data the flags name."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from functools import partial

from fastfree.commands.common import data_config, load_on_device, progress_bar, run_metadata, setup, write_json
from fastfree.commands.every_learner import run_every_learner
from fastfree.commands.run_learner import RunLearner, load_run_learner, run_learner_init
from fastfree.config import get_preset
from fastfree.device import resolve_metatest_engine
from fastfree.errors import FastFreeError
from fastfree.free.learner_file import load_learner
from fastfree.free.run import learner_init
from fastfree.metatest.domains import metatest_data
from fastfree.metatest.initializations import average_init, best_model_init, random_init
from fastfree.metatest.protocol import MetaTestConfig, ShotResult, run_metatest
from fastfree.models import build_model
from fastfree.pool.fit import check_pool_fits
from fastfree.pool.store import load_pool


def metatest_config(args, base: MetaTestConfig) -> MetaTestConfig:
    fields = {
        "tasks": args.tasks, "ways": args.ways, "shots": tuple(args.shots) if args.shots else None,
        "queries": args.queries, "steps": args.steps, "lr": args.lr, "chunk": args.chunk,
        "seed": args.seed, "engine": args.engine,
    }
    return replace(base, **{k: v for k, v in fields.items() if v is not None})


def _check_method(args) -> None:
    if args.method == "learner" and not (args.run or args.learner_file):
        raise FastFreeError("--method learner meta-tests a trained meta-learner: name its run with --run RUN_DIR "
                            "(the --run-dir of `fastfree train`, by default runs/<preset>) or its file with "
                            "--learner-file FILE (`fastfree export`)")
    if args.learner_file and args.method != "learner":
        raise FastFreeError(f"--learner-file goes with --method learner; {args.method} does not start from a "
                            "meta-learner: drop --learner-file")
    if args.learner_file and args.learner is not None:
        raise FastFreeError("--learner chooses among a run directory's learners; a learner file holds one: drop "
                            f"--learner, or export that one (`fastfree export --run RUN_DIR --learner {args.learner} "
                            "--out FILE.safetensors`)")
    if args.run and args.method not in ("learner", "random"):
        raise FastFreeError(f"--run goes with --method learner (the run's meta-learner) or random (a fresh learner of "
                            f"its shape); {args.method} starts from a pool: drop --run and pass --pool")
    if args.learner is not None and args.method != "learner":
        raise FastFreeError("--learner picks which of a run's meta-learners to test: it needs --method learner")
    # flags that would be accepted and ignored (the output showed the run's own numbers)
    ignored = []
    if args.run:
        ignored += [("--pool", args.pool, "the run's teachers are not used; its learner is"),
                    ("--arch", args.arch, "the learner has the run's architecture"),
                    ("--width", args.width, "the learner has the run's width")]
        if args.data is None:
            ignored += [(flag, value, "--run tests on the run's own data; to test another data set add --data SOURCE")
                        for flag, value in (("--image-size", args.image_size),
                                            ("--images-per-class", args.images_per_class),
                                            ("--normalization", args.normalization))]
    elif args.method in ("random", "learner"):  # only Average and Best-Model read a pool
        ignored.append(("--pool", args.pool, f"{args.method} does not start from a pool's models"))
    if args.method in ("average", "best-model"):
        ignored += [("--arch", args.arch, f"{args.method} starts from the pool's models"),
                    ("--width", args.width, f"{args.method} starts from the pool's models")]
    if args.per_task and not args.json:
        ignored.append(("--per-task", True, "it writes each task's accuracy into --json: add --json FILE"))
    for flag, value, why in ignored:
        if value is not None:
            raise FastFreeError(f"{flag} would be ignored here: {why}")


def _print_results(title: str, results: list[ShotResult], ways: int, per_domain=None) -> None:
    print(title)
    for r in results:
        print(f"  {ways}-way {r.shots}-shot: {r.mean:.2f} +- {r.ci95:.2f} %")
    for label, rs in (per_domain or {}).items():
        print(f"  {label}: " + ", ".join(f"{r.shots}-shot {r.mean:.2f} +- {r.ci95:.2f} %" for r in rs))


def _report(args, what: str, cfg: MetaTestConfig, results: list[ShotResult], seconds: float, device,
            fields: dict, per_domain: dict | None = None) -> dict:
    """The payload every `eval` path writes (`fields`: what it tested), printed and written to --json."""
    payload = {
        "command": "eval", "method": args.method, **fields, "split": args.split, "config": cfg.__dict__,
        "engine": resolve_metatest_engine(cfg.engine, device), "dtype": args.dtype,
        "results": [r.summary() for r in results],
        "per_task_accuracy": {str(r.shots): r.accuracies for r in results} if args.per_task else None,
        "seconds": seconds, **run_metadata(device),
    }
    if per_domain:  # a multi-domain run: each domain's tasks too
        payload["domains"] = {d: [r.summary() for r in rs] for d, rs in per_domain.items()}
    _print_results(f"{what} meta-{args.split} ({cfg.tasks} tasks, {cfg.ways}-way, {cfg.queries} queries, "
                   f"{seconds:.1f} s on {payload['device_name']}):", results, cfg.ways, per_domain)
    write_json(args.json, payload)
    return payload


def run_of_training(args, device, dtype) -> dict:
    """`eval --run RUN_DIR`: the run's data (every domain) unless --data names one data set, seen in the
    learner's input space (its size and normalisation); the run's preset gives the protocol."""
    if args.learner == "every":
        return run_every_learner(args, partial(metatest_config, args), device, dtype)
    target: RunLearner = load_run_learner(args.run, (args.learner or "selected") if args.method == "learner" else None,
                                          device, dtype, args.data_root if args.data is None else None,
                                          args.decoder if args.data is None else None, with_data=args.data is None)
    run_preset = get_preset(target.preset)
    cfg = metatest_config(args, target.protocol())
    if target.learner is not None:
        init, name = run_learner_init(target, cfg.shots), target.label
    else:
        builder = partial(build_model, "conv4", cfg.ways, target.width, target.image_size)
        init, name = random_init(builder, seed=cfg.seed), "Random"
    per_domain = None
    t0 = time.perf_counter()
    with progress_bar(total=cfg.tasks * len(cfg.shots), desc=f"meta-test {name}", unit="task") as bar:
        if args.data is not None:
            dataset, _ = load_on_device(data_config(args, run_preset), device)
            data_name = dataset.name
            results = run_metatest(init, dataset.split(args.split), target.normalization, cfg, dtype,
                                   progress=bar.update, image_size=target.image_size)
        else:
            data_name = target.data.name
            results, per_domain = metatest_data(init, target.data, args.split, cfg, dtype, bar.update)
    seconds = time.perf_counter() - t0
    return _report(args, f"{name} of {args.run} on {data_name}", cfg, results, seconds, device,
                   {"run": str(args.run), "learner": name, "iteration": target.iteration, "preset": target.preset,
                    "dataset": data_name, "domains": None}, per_domain)


def learner_file(args, preset, device, dtype) -> dict:
    """`eval --learner-file FILE`: the file's learner on the data the flags name, in the learner's input
    space (its image size, its normalisation), adapted with its run's steps and learning rate."""
    module, card = load_learner(args.learner_file, device, dtype)
    cfg = metatest_config(args, replace(preset.metatest, ways=card.ways, steps=card.steps, lr=card.lr,
                                        queries=card.queries))
    dataset, _ = load_on_device(data_config(args, preset), device)
    if dataset.name not in card.data:
        print(f"note: the learner's run learned from {', '.join(card.data)}; these tasks are {dataset.name}'s "
              "(a cross-domain test)")
    name = card.label()
    t0 = time.perf_counter()
    with progress_bar(total=cfg.tasks * len(cfg.shots), desc=f"meta-test {name}", unit="task") as bar:
        results = run_metatest(learner_init(module), dataset.split(args.split), card.normalization, cfg, dtype,
                               progress=bar.update, image_size=card.image_size)
    seconds = time.perf_counter() - t0
    return _report(args, f"{name} of {args.learner_file} on {dataset.name}", cfg, results, seconds, device,
                   {"learner_file": str(args.learner_file), "learner": name, "card": asdict(card),
                    "iteration": card.iteration, "preset": preset.name, "dataset": dataset.name})


def run(args) -> dict:
    _check_method(args)
    preset, device, dtype = setup(args)
    if args.run:
        return run_of_training(args, device, dtype)
    if args.learner_file:
        return learner_file(args, preset, device, dtype)
    dcfg = data_config(args, preset)
    cfg = metatest_config(args, preset.metatest)
    pool_info = None
    pool = None
    if args.method != "random":
        pool = load_pool(args.pool or preset.pool_dir)
    dataset, _ = load_on_device(dcfg, device)
    if pool is not None:
        check_pool_fits(pool, dataset, "this evaluation", f"pass --data matching the pool, or a pool trained on "
                        f"{dataset.name!r}", "pass --image-size {size} (the pool's)")
        pool_info = {"path": str(pool.path), "teachers": len(pool)}
    if args.method == "random":
        arch = args.arch or preset.learner_arch
        builder = partial(build_model, arch, cfg.ways, args.width or preset.learner_width, dataset.image_size)
        init = random_init(builder, seed=cfg.seed)
    elif args.method == "average":
        init = average_init(pool.models())
    else:
        accs = [r.heldout_accuracy for r in pool.records]
        if None in accs:
            raise FastFreeError(f"Best-Model picks the teacher of highest held-out accuracy, and the pool at {pool.path} "
                                "does not know it for some teachers (imported without --classes): re-import them "
                                "with --classes so it can be measured, or use --method average")
        init = best_model_init(pool.models(), accs)
    split = dataset.split(args.split)
    t0 = time.perf_counter()
    engine = resolve_metatest_engine(cfg.engine, device)
    with progress_bar(total=cfg.tasks * len(cfg.shots), desc=f"meta-test {args.method} ({engine})",
                      unit="task") as bar:
        results = run_metatest(init, split, dataset.normalization, cfg, dtype, progress=bar.update)
    seconds = time.perf_counter() - t0
    return _report(args, f"{args.method} on {dataset.name}", cfg, results, seconds, device,
                   {"preset": preset.name, "dataset": dataset.name, "pool": pool_info})
