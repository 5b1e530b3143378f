"""`fastfree profile`: operation counts and profiles.

`table1` regenerates the paper's Table 1; `run` profiles a few FREE iterations of a preset.
"""

from __future__ import annotations

from dataclasses import replace

from fastfree.commands.common import data_config, load_on_device, setup, write_json
from fastfree.errors import FastFreeError


def table1(args) -> dict:
    from fastfree.profiling.table1 import payload, table1 as build, to_markdown

    rows = build()
    print(to_markdown(rows))
    result = payload(rows)
    write_json(args.json, result)
    return result


def free_run(args) -> dict:
    from fastfree.commands.train import engine_options
    from fastfree.profiling.profile_run import profile_run, to_markdown
    from fastfree.profiling.workload import Workload, load_teachers

    preset, device, dtype = setup(args)
    cfg = preset.free
    if args.teachers_per_iteration is not None:
        cfg = replace(cfg, teachers_per_iteration=args.teachers_per_iteration)
    if args.k is not None:
        cfg = replace(cfg, five=replace(cfg.five, k=args.k))
    options, _ = engine_options(args, device)
    dataset, _ = load_on_device(data_config(args, preset), device)
    teachers, classes, source = load_teachers(preset, dataset, args.pool, device, dtype)
    workload = Workload(preset, cfg, dataset, teachers, classes, source, device, dtype)
    print(f"profiling {args.iterations} FREE iterations ({preset.name}, {source}) ...", flush=True)
    result = profile_run(workload, options, args.iterations, args.metatest_tasks, args.peak_tflops, args.trace)
    print(to_markdown(result))
    write_json(args.json, result)
    return result


SUBCOMMANDS = {"table1": table1, "run": free_run}


def run(args) -> dict:
    if args.profile_command not in SUBCOMMANDS:
        raise FastFreeError(f"unknown profile sub-command {args.profile_command!r}: use one of {', '.join(SUBCOMMANDS)}")
    return SUBCOMMANDS[args.profile_command](args)
