"""`fastfree bench`: the reference and the fast engine side by side, one run, one device.

Sections (each a median over repeats after a warm-up, with the ratio reference / fast):
  five       one FIVE epoch (b teachers x k inner steps + the meta-gradient), the preset's sizes
  iteration  one whole FREE iteration, with each phase's share
  pool       teacher-pool pretraining: batched (vmap) vs one teacher at a time
  metatest   meta-test adaptation: vmapped over tasks (and threaded, on a CPU) vs one task at a time
"""

from __future__ import annotations

from dataclasses import replace

from fastfree.commands.common import data_config, load_on_device, run_metadata, setup, write_json
from fastfree.errors import FastFreeError

SECTIONS = ("five", "iteration", "pool", "metatest")


def _five(args, preset, cfg, image_size, options, device) -> dict:
    from fastfree.profiling.bench_five import bench, variants_for
    from fastfree.profiling.timing import fastest

    variants = variants_for(device)
    if options.compile and "fast_compile" not in variants:
        variants.append("fast_compile")
    r = bench(variants, cfg.teachers_per_iteration, cfg.five.k, preset.pretrain.ways, cfg.five.images_per_class,
              cfg.ngf, cfg.learner_width, image_size, args.repeats, device)
    fast = fastest(r)
    return {**r, "row": ("FIVE epoch", r["times"]["reference"]["median_s"], r["times"][fast]["median_s"], fast)}


def _iteration(args, preset, cfg, dataset, options, device, dtype) -> dict:
    from fastfree.profiling.bench_iteration import bench
    from fastfree.profiling.workload import Workload, load_teachers

    teachers, classes, source = load_teachers(preset, dataset, None, device, dtype)

    def save_partial(partial: dict) -> None:  # the final JSON replaces it
        write_json(args.json, {"command": "bench", "partial": "the iteration's engines timed so far",
                               "sections": {"iteration": partial}, **run_metadata(device)})

    r = bench(Workload(preset, cfg, dataset, teachers, classes, source, device, dtype), options, args.repeats,
              save_partial, reference=not args.fast_only)
    t = r["times"]
    reference = t["reference"]["median_s"] if "reference" in t else None
    name = "FREE iteration" if cfg.generator == "meta" else f"FREE iteration, {cfg.generator} generator"
    return {**r, "generator": cfg.generator, "row": (name, reference, t["fast"]["median_s"], "fast")}


def _pool(args, preset, device) -> dict:
    from fastfree.profiling.bench_pool import bench
    from fastfree.profiling.timing import fastest

    r = bench(args.pool_teachers or preset.pretrain.teachers, args.pool_steps, args.repeats,
              preset.pretrain.batch_size, device)
    t = r["times"]
    fast = fastest(r, baseline="one_by_one")  # batched or threads
    return {**r, "row": ("pool pretraining (per teacher-step)", t["one_by_one"]["median_s"], t[fast]["median_s"],
                         fast)}


def _metatest(args, preset, device) -> list[dict]:
    from fastfree.profiling.bench_metatest import bench
    from fastfree.profiling.timing import fastest

    out = []
    for shots in preset.metatest.shots:
        r = bench(args.metatest_tasks, shots, min(preset.metatest.chunk, args.metatest_tasks), args.repeats, device)
        t, fast = r["times"], fastest(r)
        out.append({**r, "row": (f"meta-test {shots}-shot (per task)", t["reference"]["median_s"],
                                 t[fast]["median_s"], fast)})
    return out


def to_markdown(rows: list[tuple], meta: dict) -> str:
    lines = [f"fastfree bench on {meta['device_name']} (torch {meta['torch']}, {meta['threads']} threads): medians",
             "", "| benchmark | reference | fast | fast variant | speed-up |", "|---|---|---|---|---|"]
    for name, ref, fast, variant in rows:  # ref None: not timed in this call (--fast-only)
        lines.append(f"| {name} | " + (f"{1e3 * ref:.1f} ms" if ref is not None else "-") + f" | {1e3 * fast:.1f} ms "
                     f"| {variant} | " + (f"{ref / fast:.2f}x" if ref is not None else "-") + " |")
    return "\n".join(lines)


def run(args) -> dict:
    from fastfree.engine.options import EngineOptions

    preset, device, dtype = setup(args)
    sections = args.only or list(SECTIONS)
    cfg = preset.free
    if args.teachers_per_iteration is not None:
        cfg = replace(cfg, teachers_per_iteration=args.teachers_per_iteration)
    if args.k is not None:
        cfg = replace(cfg, five=replace(cfg.five, k=args.k))
    if args.generator != "meta":
        if sections != ["iteration"]:
            raise FastFreeError(f"--generator {args.generator} changes the whole iteration only: pass --only "
                                "iteration with it")
        cfg = replace(cfg, generator=args.generator)
    if args.amp and args.dtype == "float64":
        raise FastFreeError("--amp (bf16) and --dtype float64 contradict each other; drop one")
    options = EngineOptions.from_flags(args, device)
    if args.fast_only and sections != ["iteration"]:
        raise FastFreeError("--fast-only times the iteration's fast engine alone: pass --only iteration with it")
    dataset = None
    if "iteration" in sections:
        dataset, _ = load_on_device(data_config(args, preset), device)
    image_size = dataset.image_size if dataset is not None else (args.image_size or preset.data.image_size)
    results: dict[str, object] = {}
    rows = []
    for section in sections:
        print(f"bench: {section} ...", flush=True)
        if section == "five":
            results[section] = _five(args, preset, cfg, image_size, options, device)
        elif section == "iteration":
            results[section] = _iteration(args, preset, cfg, dataset, options, device, dtype)
        elif section == "pool":
            results[section] = _pool(args, preset, device)
        else:
            results[section] = _metatest(args, preset, device)
        for r in results[section] if isinstance(results[section], list) else [results[section]]:
            rows.append(r["row"])
            print("  " + to_markdown([r["row"]], run_metadata(device)).splitlines()[-1], flush=True)
    meta = run_metadata(device)
    print(to_markdown(rows, meta))
    payload = {"command": "bench", "preset": preset.name, "repeats": args.repeats, "fast_options": options.__dict__,
               "summary": [{"benchmark": n, "reference_s": r, "fast_s": f, "fast_variant": v,
                            "speedup": r / f if r is not None else None}
                           for n, r, f, v in rows],
               "sections": results, **meta}
    write_json(args.json, payload)
    return payload
