"""`fastfree train`: the whole FREE job (pool if needed, Algorithm 3, meta-val selection, meta-test)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path

from fastfree.commands.common import data_config, load_on_device, progress_bar, run_metadata, setup, write_json
from fastfree.commands.run_data_record import accept_moved_data, check_same_data, record_data, say_moved
from fastfree.commands.run_learner import read_run_config, write_input_space
from fastfree.commands.run_pool import pool_in_run_dir
from fastfree.commands.train_domains import domain_configs, domain_pools, domain_teachers, load_domains
from fastfree.errors import FastFreeError
from fastfree.folder_lock import hold
from fastfree.free.atomic import atomic_write_text
from fastfree.free.config import BELL_SETTINGS_USED_BY, FreeConfig
from fastfree.free.run import CHECKPOINT, RunContext, completed_iterations, default_run_dir, final_results, \
    is_evaluation, refuse_cutting, results_markdown, train_free
from fastfree.graceful_stop import stop_on_signals
from fastfree.metatest.initializations import random_init
from fastfree.models import build_model
from fastfree.pool.fit import check_pool_fits
from fastfree.pool.store import load_pool
from fastfree.read_back import read_json
from fastfree.settings_diff import settings_diff


def engine_options(args, device):
    """The fast engine's options (None for --engine reference) and the settings recorded in config.json."""
    if args.engine == "reference":
        # set = not the parser's default (False for --amp/--compile, None for the --x/--no-x switches)
        for flag, value, default in (("--amp", args.amp, False), ("--compile", args.compile, False),
                                     ("--cuda-graphs", args.cuda_graphs, None), ("--kernels", args.kernels, None),
                                     ("--teacher-map", args.teacher_map, None)):
            if value is not default:
                flag = flag if value is not False else "--no-" + flag[2:]
                raise FastFreeError(f"{flag} belongs to the fast engine; drop it or drop --engine reference")
        return None, {"engine": "reference"}
    if args.amp and args.dtype == "float64":
        raise FastFreeError("--amp (bf16) and --dtype float64 contradict each other: float64 is for equivalence "
                            "checks, bf16 for speed; drop one")
    from fastfree.engine.options import EngineOptions

    options = EngineOptions.from_flags(args, device)
    return options, {"engine": "fast", **options.__dict__}


def free_config(args, base: FreeConfig) -> FreeConfig:
    cfg = base
    top = {"iterations": args.iterations, "warmup": args.warmup, "teachers_per_iteration": args.teachers_per_iteration,
           "seed": args.seed, "eval_every": args.eval_every, "val_tasks": args.val_tasks,
           "memory_per_class": args.memory_per_class, "checkpoint_every": args.checkpoint_every}
    cfg = replace(cfg, **{k: v for k, v in top.items() if v is not None})
    if args.k is not None:
        cfg = replace(cfg, five=replace(cfg.five, k=args.k))
    if args.generator is not None:
        cfg = replace(cfg, generator=args.generator)
    if args.generator_optimizer is not None:
        cfg = replace(cfg, generator_optimizer=args.generator_optimizer)
    if args.no_replay:
        cfg = replace(cfg, replay_enabled=False)
    if args.replay_first_order:
        cfg = replace(cfg, replay=replace(cfg.replay, second_order=False))
    if args.shots is not None:
        cfg = replace(cfg, replay=replace(cfg.replay, shots=args.shots))
    bell = {"mode": args.learner_update, "outer": args.bell_outer, "inner_optimizer": args.bell_inner,
            "targets": args.targets,
            "augment": True if args.bell_augment else None}
    return replace(cfg, bell=replace(cfg.bell, **{k: v for k, v in bell.items() if v is not None}))


PER_TASK = "results_per_task.json"  # {method: {shots: [each meta-test task's accuracy]}}


def kept_name(name: str, iterations: int) -> str:
    """What a results file of a run's end at `iterations` is renamed to when the run is lengthened."""
    path = Path(name)
    return f"{path.stem}-{iterations}it{path.suffix}"


def _given(pool) -> bool:
    """Whether config.json's "pool" names pools (a path, or one per domain), not the run's own."""
    return pool is not None and (not isinstance(pool, list) or all(p is not None for p in pool))


def unused_settings_as_defaults(free: dict) -> None:
    """A stored FREE config with the settings its update does not use set to their defaults: runs started
    before such settings were refused (e.g. --learner-update erm --bell-outer adam) resume without them."""
    from fastfree.free.bell import BellConfig
    from fastfree.free.replay import ReplayConfig

    bell, replay = free.get("bell", {}), free.get("replay", {})
    mode = bell.get("mode", "bell")
    for _, field, used_by in BELL_SETTINGS_USED_BY:
        if mode not in used_by and field in bell:
            bell[field] = getattr(BellConfig, field)
    if not free.get("replay_enabled", True) and "second_order" in replay:
        replay["second_order"] = ReplayConfig.second_order


def absolute_root(data: dict) -> dict:
    """A data config with its root absolute: config.json must name the data wherever `eval --run` is
    run from (a root recorded as typed, e.g. `--data-root cf`, was found only from the same folder). A
    root taken from FASTFREE_CIFAR_FS & co. stays None, read from the variable again: recorded, a
    resume after the data moved and the variable followed it would be refused as another root."""
    return {**data, "root": str(Path(data["root"]).resolve())} if data.get("root") else data


POOL_RECORD = "pools.json"  # which teachers the run learns from: each pool's path and weights digest
COMMAND = "command.json"  # the last `fastfree train` call on the run, as typed and where: `fastfree status`


def pool_identity(pool) -> dict:
    return {"path": str(Path(pool.path).resolve()), "weights_sha256": pool.manifest.get("weights_sha256")}


def check_same_pools(run_dir: Path, pools: list, resume: bool) -> None:
    """A resumed run continues on the teachers it started with: another pool at the same path (re-pretrained,
    grown, overwritten) was taken silently; the same pool moved or named another way is accepted."""
    path = run_dir / POOL_RECORD
    if not resume or not path.is_file():
        return
    started = read_json(path, "Restore it from a copy of the run, or delete it: --resume then takes the pools given "
                        "now as the run's, without checking that they are the ones it started with")["pools"]
    now = [pool_identity(p) for p in pools]
    for a, b in zip(started, now):
        if a["weights_sha256"] != b["weights_sha256"]:
            raise FastFreeError(f"--resume: the pool at {b['path']} is not the one {run_dir} started with (its weights "
                                f"differ from those of {a['path']} then, {path}): pass the run's own pool")


def refuse_another_device(run_dir: Path, stored: dict, now: dict, device) -> None:
    """The fast engine's defaults follow the device (CUDA graphs and the Triton kernels on a GPU), so the
    same flags on another kind of device give another engine: say so, rather than "resume with the same
    flags" (which they were)."""
    rest = [{k: v for k, v in d.items() if k != "engine"} for d in (stored, now)]
    was, engine = stored.get("engine", {}), now.get("engine", {})
    if rest[0] != rest[1] or was == engine or was.get("engine") != "fast" or engine.get("engine") != "fast":
        return
    on_gpu = bool(was.get("vectorize"))  # set by the device alone (graphs and kernels have --no- flags)
    if on_gpu != (device.type == "cuda"):
        raise FastFreeError(f"--resume: {run_dir} was started on {'a GPU' if on_gpu else 'a CPU'}, and the fast "
                            f"engine's settings follow the device ({settings_diff(was, engine)}): resume it with "
                            f"--device {'cuda' if on_gpu else 'cpu'}")


def change_length(run_dir: Path, iterations: int, done: int) -> None:
    """Before a run that has done `done` iterations is resumed to another --iterations: refuse to
    cut iterations already done, and keep the results of its old end rather than overwrite them
    (results.json, results.md and results_per_task.json become results-<N>it.json, ...)."""
    refuse_cutting(run_dir, iterations, done)
    old = run_dir / "results.json"
    if old.is_file():
        ended = read_json(old, "Restore it from a copy of the run, or delete it: the lengthened run then writes its "
                          "results over its old end's (results.md, results_per_task.json)").get("iterations", done)
        for name in ("results.json", "results.md", PER_TASK):
            path = run_dir / name
            if path.is_file():
                path.replace(run_dir / kept_name(name, ended))


def run(args) -> dict:
    preset, device, dtype = setup(args)
    domains = domain_configs(args, preset)
    cfg = free_config(args, preset.free)
    run_dir = default_run_dir(args.run_dir, preset.name)
    config_path = run_dir / "config.json"
    if run_dir.is_dir():  # before it is read: a second command on the run is refused (fastfree/folder_lock.py)
        hold(run_dir)
    # before any data is read, a pool pretrained or a file of the run written
    if args.resume and not (run_dir / CHECKPOINT).is_file():
        raise FastFreeError(f"--resume: no {CHECKPOINT} in {run_dir}; start the run without --resume")
    if not args.resume and (run_dir / CHECKPOINT).is_file():  # its config.json must stay the run's own
        raise FastFreeError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --run-dir")
    finished = [n for n in ("results.json", "results.md") if (run_dir / n).is_file()]
    if not args.resume and finished:  # a finished run whose checkpoint was deleted (to save space): a fresh
        # start here would replace its results, selection and learners
        raise FastFreeError(f"{run_dir} holds a finished run ({', '.join(finished)}) without its {CHECKPOINT}, "
                            "so it cannot be continued: choose another --run-dir, or delete the folder to start over")
    started_at = completed_iterations(run_dir) if args.resume else 0  # train_seconds counts this call's only
    stored = read_run_config(run_dir) if args.resume and config_path.is_file() else None  # the run's own settings
    if stored is not None:
        own = stored["free"]
        if args.iterations is None:  # the run's own length: only an explicit --iterations lengthens it
            cfg = replace(cfg, iterations=own["iterations"])
        if args.checkpoint_every is None and "checkpoint_every" in own:  # likewise its own interval
            cfg = replace(cfg, checkpoint_every=own["checkpoint_every"])
    options, engine_settings = engine_options(args, device)
    if domains:
        resolved = {"preset": preset.name, "domains": [absolute_root(c.__dict__) for c in domains], "free": cfg.to_dict(),
                    "pool": args.pool, "engine": engine_settings, "dtype": args.dtype}
    else:
        dcfg = data_config(args, preset)
        resolved = {"preset": preset.name, "data": absolute_root(dcfg.__dict__), "free": cfg.to_dict(),
                    "pool": args.pool[0] if args.pool else None, "engine": engine_settings, "dtype": args.dtype}
    if args.shots is not None:  # recorded only when given, so runs from before the flag resume as they were
        resolved["shots"] = [args.shots]
    if stored is not None:
        if stored.get("data"):  # a run from before roots were recorded absolute: as typed, from here
            stored["data"] = absolute_root(stored["data"])
        if stored.get("domains"):
            stored["domains"] = [absolute_root(d) for d in stored["domains"]]
        engine = stored.get("engine", {})
        if engine.get("engine") == "fast" and "five_vmap" not in engine:  # a run started before the switch
            engine["five_vmap"] = engine.get("vectorize")  # existed: FIVE then mapped its teachers as replay
        if engine.get("engine") == "fast" and "fuse_upsample" not in engine:  # likewise before the fused
            engine["fuse_upsample"] = True  # upsampling: it continues with it (the same values, up to rounding)
        free = stored.get("free", {})
        if "augment" not in free.get("bell", {}):  # a run started before BELL's augmentation was an option
            free.setdefault("bell", {})["augment"] = False  # had none
        # how often it checkpoints changes no result (a resume is bit-exact): it may change; config.json then says so
        interval_changed = free.get("checkpoint_every") != cfg.checkpoint_every
        free["checkpoint_every"] = cfg.checkpoint_every
        free.setdefault("generator_optimizer", "persistent")  # likewise, before the generator's optimiser was
        unused_settings_as_defaults(free)  # a run from before such settings were refused where they do not act
        now = json.loads(json.dumps(resolved))
        # --iterations may differ: resuming lengthens (or shortens, down to what is done) the run
        lengthen = free.get("iterations") != cfg.iterations
        if lengthen:
            refuse_cutting(run_dir, cfg.iterations, started_at)  # before the data and pool are read
            # a run ends with a meta-val evaluation of its last iteration; ending where the run stopped
            # needs that iteration to have been evaluated as the run was then configured
            evaluated = is_evaluation(started_at, replace(cfg, iterations=free["iterations"]))
            free["iterations"] = cfg.iterations
            if cfg.iterations == started_at and not evaluated:
                raise FastFreeError(f"--resume --iterations {cfg.iterations}: {run_dir} stopped at iteration "
                                    f"{started_at}, which meta-val did not evaluate (every {cfg.eval_every}); a run "
                                    f"of {cfg.iterations} iterations evaluates its last: pass --iterations "
                                    f"{started_at + 1} or more")
        if (run_dir / POOL_RECORD).is_file() and _given(stored.get("pool")) and _given(now.get("pool")):
            # the pools are checked by their weights once loaded, so their path may differ (moved, or given
            # relative vs absolute); a --pool given or dropped still differs here, before any pool is pretrained
            stored["pool"] = now["pool"]
        moves = accept_moved_data(stored, now)  # the data's folder alone differs: checked by digest once loaded
        refuse_another_device(run_dir, stored, now, device)
        if stored != now:
            raise FastFreeError(f"--resume: the flags give a different configuration from the one {run_dir} was "
                                f"started with ({config_path}: {settings_diff(stored, now)}); resume with the same "
                                f"flags")
    else:
        lengthen, moves, interval_changed = False, [], False
    if domains:
        dataset = load_domains(domains, device)
        pools = domain_pools(args, preset, dataset, run_dir, dtype)
        teachers, teacher_classes = domain_teachers(pools, dataset, device, dtype)
        ways = pools[0].records[0].num_classes
    else:
        dataset, _ = load_on_device(dcfg, device)
        pool = load_pool(args.pool[0]) if args.pool else \
            pool_in_run_dir(run_dir / "pool", dataset, preset.pretrain, dtype, "no --pool given")
        check_pool_fits(pool, dataset, "this run", "pass a matching --data or --pool",
                        "pass --image-size {size} (the pool's)")
        if len({r.num_classes for r in pool.records}) != 1:
            raise FastFreeError("all teachers of the pool must solve tasks with the same number of classes")
        teachers = [m.to(dtype).requires_grad_(False) for m in pool.models(device)]
        teacher_classes = [r.classes for r in pool.records]
        ways = pool.records[0].num_classes
        pools = [pool]
    check_same_pools(run_dir, pools, args.resume)
    unrecorded = check_same_data(run_dir, dataset, moves) if args.resume else True
    splits = [split for data in (dataset.domains if domains else [dataset]) for split in (data.val, data.test)]
    narrow = min(splits, key=lambda split: len(split.classes))  # else meta-val stops at its first evaluation
    if len(narrow.classes) < ways:
        raise FastFreeError(f"the pool's teachers solve {ways}-way tasks but {narrow.name} has {len(narrow.classes)} "
                            f"classes, too few for {ways}-way meta-val and meta-test: use a pool of at most "
                            f"{len(narrow.classes)} classes per teacher (fastfree pretrain --ways {len(narrow.classes)})")
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: bad data or a pool that does not fit leave nothing
    hold(run_dir)  # a fresh run's folder, as soon as it exists
    if lengthen:  # likewise: a lengthening refused for its data or pool leaves the run as it was
        change_length(run_dir, cfg.iterations, started_at)
        write_json(config_path, resolved)
    if not args.resume or not (run_dir / POOL_RECORD).is_file():  # a run from before it: its pool now
        write_json(run_dir / POOL_RECORD, {"pools": [pool_identity(p) for p in pools]})
    if not args.resume or not config_path.is_file() or moves or interval_changed:
        write_json(config_path, resolved)
    if unrecorded:  # a fresh run, or one from before data.json: its data now
        record_data(run_dir, dataset)
    if moves:
        say_moved(moves)
    write_input_space(run_dir, dataset, ways)  # what `fastfree adapt` needs without the data
    if args.argv is not None:  # how to continue it, for `fastfree status` (config.json: what the flags resolved to)
        write_json(run_dir / COMMAND, {"argv": args.argv, "cwd": os.getcwd(),
                                       "at": datetime.now().astimezone().isoformat(timespec="seconds")})
    shots = (args.shots,) if args.shots is not None else preset.metatest.shots
    # --eval-chunk changes how many tasks adapt at once, not which tasks: a runtime setting (memory), left out of
    # config.json like --threads, so a run that ran out of memory in meta-val resumes with a smaller one
    chunk = args.eval_chunk or preset.metatest.chunk
    val_cfg = replace(preset.metatest, tasks=cfg.val_tasks, shots=shots, engine="auto", chunk=chunk)
    test_cfg = replace(preset.metatest, tasks=args.test_tasks or preset.metatest.tasks, shots=shots, ways=ways,
                       engine="auto", chunk=chunk)
    engine = None
    if options is not None:
        from fastfree.engine.trainer import FastEngine

        engine = FastEngine(teachers, options, device)  # a multi-domain pool: groups by (architecture, domain size)
    ctx = RunContext(run_dir, cfg, dataset, teachers, teacher_classes, replace(val_cfg, ways=ways),
                     device, engine, dtype)
    t0 = time.perf_counter()
    # initial: a resumed run's rate and time left count this call's iterations only
    with progress_bar(total=cfg.iterations, initial=started_at, desc="FREE", unit="it") as bar:
        def progress(m):
            bar.update(m["iteration"] + 1 - bar.n)  # absolute: a resumed run starts where it stopped
            if "val" in m:
                bar.write(f"iteration {m['iteration'] + 1}: meta-val " +
                          ", ".join(f"{s}-shot {v[0]:.2f}" for s, v in m["val"].items()))
        # Ctrl-C / SIGTERM: the iteration under way ends with a checkpoint (fastfree/graceful_stop.py)
        with stop_on_signals("the current FREE iteration, with a checkpoint there") as stop:
            state = train_free(ctx, args.resume, progress, stop=stop)
    train_s = time.perf_counter() - t0
    builder = partial(build_model, "conv4", ways, cfg.learner_width, dataset.image_size)
    print(f"meta-test: FREE (selected on meta-val and last) and Random on the same {test_cfg.tasks} tasks "
          f"x {len(test_cfg.shots)} shot counts ...", flush=True)
    summary = final_results(ctx, state, test_cfg, lambda: random_init(builder, test_cfg.seed))
    write_json(run_dir / PER_TASK, summary.pop("per_task"))  # thousands of numbers: beside results.json
    meta = run_metadata(device)
    table = results_markdown(summary, meta["device_name"], test_cfg.shots, ways,
                             cfg.replay.shots if cfg.replay_enabled else None)
    atomic_write_text(run_dir / "results.md", f"# FREE results ({preset.name})\n\n" + table)  # as every run file
    payload = {"command": "train", "run_dir": str(run_dir), **summary, "train_seconds": train_s,
               "started_at_iteration": started_at,
               "config": resolved, **meta}
    write_json(run_dir / "results.json", payload)
    write_json(args.json, payload)
    print(table)
    return payload
