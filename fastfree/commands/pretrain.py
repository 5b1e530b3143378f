"""`fastfree pretrain`: train a pool of teachers and save it as safetensors + manifest."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from fastfree.commands.common import data_config, load_on_device, progress_bar, run_metadata, setup, write_json
from fastfree.device import resolve_pool_engine
from fastfree.errors import FastFreeError
from fastfree.folder_lock import hold
from fastfree.graceful_stop import stop_on_signals
from fastfree.pool.group_state import continuing
from fastfree.pool.pretrain import STOPPING_AFTER, PretrainConfig, pretrain_pool, steps_per_epoch, steps_trained_before
from fastfree.pool.progress import PretrainProgress, fingerprint
from fastfree.pool.store import records_from_training, save_pool
from fastfree.pool.teachers import sample_teacher_specs


def pretrain_config(args, base: PretrainConfig) -> PretrainConfig:
    if args.arch is not None and args.archs is not None:
        raise FastFreeError("--arch and --archs both name the teachers' architectures: pass one of them")
    archs = (args.arch,) if args.arch is not None else args.archs
    milestones = getattr(args, "lr_milestones", None)
    if milestones is not None:
        if None in milestones and len(milestones) > 1:
            raise FastFreeError(f"--lr-milestones takes epochs or 'none' alone, got "
                                f"{' '.join('none' if m is None else str(m) for m in milestones)}")
        milestones = tuple(m for m in milestones if m is not None)
    fields = {
        "teachers": args.teachers, "ways": args.ways, "archs": archs, "width": args.width,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "group_size": args.group_size, "lr_gamma": getattr(args, "lr_gamma", None),
        "conv4_milestones": milestones, "resnet_milestones": milestones,
    }
    return replace(base, **{k: v for k, v in fields.items() if v is not None})


def run(args) -> dict:
    preset, device, dtype = setup(args)
    dcfg = data_config(args, preset)
    cfg = pretrain_config(args, preset.pretrain)
    out = args.out or preset.pool_dir
    dataset, load_s = load_on_device(dcfg, device)
    specs = sample_teacher_specs(dataset.train.classes, cfg.teachers, cfg.ways, cfg.seed, cfg.archs)
    per_epoch = steps_per_epoch(dataset.train, specs, cfg)
    engine = resolve_pool_engine(args.engine, device)
    progress = PretrainProgress(out, fingerprint(cfg.to_dict(), dataset.name, dataset.normalization.to_dict(),
                                                 dataset.image_size, dcfg.__dict__, args.dtype, engine))
    if args.resume and args.overwrite:
        raise FastFreeError("--resume keeps the pool's teachers and --overwrite replaces them: pass one of them")
    if Path(out).is_dir() or not args.resume:  # one command at a time on a pool (fastfree/folder_lock.py)
        Path(out).mkdir(parents=True, exist_ok=True)
        hold(out)
    if args.resume:
        done, paused = progress.resume(specs), progress.paused()
        print(f"resuming: {len(done)} of {len(specs)} teachers already trained"
              + (f", {continuing(paused, cfg.epochs)}" if paused else ""),
              flush=True)
    else:
        progress.start(overwrite=args.overwrite)
        done, paused = {}, []
    t0 = time.perf_counter()
    desc = f"pretraining {cfg.teachers} teachers ({engine})"
    # Ctrl-C / SIGTERM: the teachers under way stop at their epoch's end, their state saved, then
    # StoppedBySignal (fastfree/graceful_stop.py, fastfree/pool/group_state.py)
    # a resumed run's bar starts at the steps taken before, so its rate and time left are this run's
    before = steps_trained_before(per_epoch, cfg.epochs, done, paused)
    with progress_bar(total=cfg.epochs * sum(per_epoch.values()), initial=before, desc=desc,
                      unit="teacher-step") as bar, \
            stop_on_signals(STOPPING_AFTER) as stop:
        trained = pretrain_pool(dataset.train, dataset.normalization, specs, cfg, engine, dtype, bar.update,
                                done=done, on_trained=progress.save, stop=stop, paused=paused,
                                on_paused=progress.save_paused)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0
    records = records_from_training(trained, cfg, dataset.image_size)
    save_pool(out, records, [t.state_dict for t in trained], dataset.name, dataset.normalization, cfg.to_dict(),
              progress.provenance())
    progress.finish()
    accs = [r.heldout_accuracy for r in records]
    by_arch = {a: [r.heldout_accuracy for r in records if r.arch == a] for a in cfg.archs}
    result = {
        "command": "pretrain",
        "preset": preset.name,
        "pool": str(out),
        "data": dcfg.__dict__,
        "config": cfg.to_dict(),
        "engine": engine,
        "dtype": args.dtype,
        "teachers": len(records),
        "resumed_teachers": len(done),  # trained by an earlier, interrupted or smaller run: not in "training"
        "heldout_accuracy": {
            "mean": sum(accs) / len(accs), "min": min(accs), "max": max(accs),
            "per_teacher": accs,
            "by_arch": {a: {"teachers": len(v), "mean": sum(v) / len(v)} for a, v in by_arch.items() if v},
        },
        "seconds": {"data": load_s, "training": train_s},
        **run_metadata(device),
    }
    print(f"pool of {len(records)} teachers written to {out}")
    print(f"held-out accuracy: mean {100 * result['heldout_accuracy']['mean']:.2f}%  "
          f"(min {100 * min(accs):.2f}%, max {100 * max(accs):.2f}%)  "
          f"training {train_s:.1f} s on {result['device_name']}")
    if len(cfg.archs) > 1:
        print("by architecture: " + ", ".join(f"{a} {v['teachers']} teachers, mean {100 * v['mean']:.2f}%"
                                              for a, v in result["heldout_accuracy"]["by_arch"].items()))
    write_json(args.json, result)
    return result
