"""`fastfree profile run`: where a FREE iteration's time and FLOPs go, on this device.

Sequence (all on one device, one process):
1. one iteration with the eager variant of the chosen engine under FlopCounterMode: FLOPs per
   phase (the same operations the compiled or graphed engine runs; a replayed CUDA graph or an
   inductor kernel is invisible to the dispatcher, so counting needs the eager run);
2. one warm-up iteration with the chosen engine (compilation, CUDA-graph capture): untimed;
3. `iterations` timed iterations: device time per phase from CUDA events (wall time on a CPU),
   NVML telemetry sampled in a background thread, peak memory; an iteration whose FIVE compiled
   or captured a variant first (a mixed pool meets new architecture groups and teacher counts
   later) is left out of the means;
4. the meta-test phase: the meta-learner adapted on `metatest_tasks` tasks per shot count.
FLOPs are those FlopCounterMode counts (of the model: the eager run keeps the generator's
upsample-then-convolve, see `_eager`): convolutions and matmuls (forward and backward), plus
the fused Triton losses through their registered formulas; element-wise work, normalisation
and optimiser updates are not counted. Replay's FLOPs are per meta-batch (the count varies
with its patience-based stop) times the meta-batches each timed iteration ran. In a mixed pool
FIVE's, alignment's and BELL's work depends on the teachers drawn (a ResNet-18 costs ~140 Conv4s),
so each timed iteration is counted again, eagerly, on its own draw. Rates are each phase's FLOPs
over its time summed across the timed iterations (the mean's ratio, so that FLOPs and time are of
the same work), and the protocol's hours are mean times x iterations.
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from fastfree.errors import FastFreeError
from fastfree.free.run import is_evaluation, learner_init
from fastfree.free.trainer import PhaseTimer, free_iteration
from fastfree.metatest.protocol import run_metatest
from fastfree.profiling.flops import GlobalFlopCounter
from fastfree.profiling.peaks import peak_tflops, precision_key
from fastfree.profiling.telemetry import Telemetry
from fastfree.profiling.workload import PHASES, CountingTimer, Workload, fresh_state, make_engine

# the phases --amp runs under bf16 autocast (engine/five.py, engine/bell.py); the others stay in fp32/TF32
AUTOCAST_PHASES = ("five", "bell")

# the paper's data-recovery GPU-hours (Table 2, one RTX 3090), by preset and k
PAPER_RECOVERY_HOURS = {("cifar-fs", 5): 0.11, ("cifar-fs", 2): 0.05}


def _eager(options):
    """The engine FLOPs are counted on: eager, and with the generator as the paper writes it
    (upsample, then convolve), so the count is the model's work whatever the engine executes:
    the fused upsampling (fastfree.engine.upsample_conv) does that work in 4/9 of those
    convolutions' multiply-adds, which shows as a shorter time and a higher MFU."""
    return None if options is None else replace(options, compile=False, cuda_graphs=False, fuse_upsample=False)


def _iteration(w: Workload, state, engine, timer=None) -> dict:
    metrics, _ = free_iteration(state, w.teachers, w.teacher_classes, w.dataset.normalization, w.cfg, engine, timer)
    return metrics


def _count(w: Workload, state, engine) -> tuple[dict[str, int], int]:
    """FLOPs per phase of one eager iteration (the engine's eager variant), and its replay meta-batches."""
    with GlobalFlopCounter() as counter:
        timer = CountingTimer(w.device, counter)
        metrics = _iteration(w, state, engine, timer)
    return timer.flops(), metrics.get("replay", {}).get("meta_batches", 0)


def _architecture(model) -> tuple:
    return tuple((name, tuple(t.shape)) for name, t in model.state_dict().items())


def _with_draw(state, draw: dict):
    """`state` with its RNG streams set to `draw` (so the next iteration draws what that one drew)."""
    for k, g in state.rngs.items():
        g.set_state(draw[k])
    return state


def _metatest(w: Workload, state, tasks: int) -> tuple[float, int]:
    """Seconds per task (device time) and FLOPs per task of adapting the meta-learner."""
    base = replace(w.preset.metatest, ways=w.ways, engine="auto")
    with GlobalFlopCounter() as counter:  # FLOPs per task: one task per shot count
        run_metatest(learner_init(state.learner), w.dataset.test, w.dataset.normalization,
                     replace(base, tasks=1, chunk=1), w.dtype)
    timer = PhaseTimer(w.device)
    timer.mark("start")
    run_metatest(learner_init(state.learner), w.dataset.test, w.dataset.normalization,
                 replace(base, tasks=tasks, chunk=min(base.chunk, tasks)), w.dtype)
    timer.mark("metatest")
    return timer.read()["metatest"] / tasks, counter.get_total_flops()


def _rate(flops: float | None, seconds: float, peak: float | None) -> dict:
    if flops is None or seconds <= 0:
        return {"tflop_per_s": None, "mfu": None}
    rate = flops / seconds / 1e12
    return {"tflop_per_s": rate, "mfu": rate / peak if peak else None}


def profile_run(w: Workload, options, iterations: int, metatest_tasks: int, peak_override: float | None = None,
                trace: str | None = None) -> dict:
    from fastfree.commands.common import run_metadata

    device = w.device
    meta = run_metadata(device)
    precision = precision_key(device, w.dtype, bool(options and options.amp))
    peak = peak_override or peak_tflops(meta["device_name"], precision)
    # --amp autocasts FIVE and BELL only (engine/five.py, engine/bell.py): the other phases and the
    # meta-test compute in the unautocast precision, and their MFU is against that precision's peak
    plain = precision_key(device, w.dtype, False)
    plain_peak = peak_override or peak_tflops(meta["device_name"], plain)
    phase_peak = {name: peak if name in AUTOCAST_PHASES else plain_peak for name in PHASES}
    state = fresh_state(w)

    # 1. FLOPs per phase, on one eager iteration (also the eager engine's warm-up)
    counting = make_engine(w, _eager(options))
    flops, counted_batches = _count(w, state, counting)

    # 2. warm-up of the chosen engine (compile, capture), untimed
    engine = make_engine(w, options)
    t0 = time.perf_counter()
    _iteration(w, state, engine)
    warmup_s = time.perf_counter() - t0

    # 3. timed iterations; a mixed pool's work depends on each iteration's teacher draw, so its RNG
    # states are kept for the recount below
    mixed = len({_architecture(t) for t in w.teachers}) > 1
    draws = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with Telemetry(device) as telemetry:
        timed = []
        for _ in range(iterations):
            draws.append({k: g.get_state() for k, g in state.rngs.items()} if mixed else None)
            timed.append(_iteration(w, state, engine))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    memory = ({"peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
               "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20} if device.type == "cuda" else
              {"host_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "note": "the whole process's peak resident memory (ru_maxrss)"})

    # a mixed pool's FIVE compiles or captures a variant the first time it meets an architecture group
    # with a new teacher count, which the one warm-up may not have met: such iterations are left out of
    # the means (their FIVE holds a one-time cost), unless every timed iteration had one
    with_setup = [i for i, m in enumerate(timed) if m.get("five_setup")]
    kept = [i for i, m in enumerate(timed) if not m.get("five_setup")] or list(range(len(timed)))
    timed, draws = [timed[i] for i in kept], [draws[i] for i in kept]
    batches = [m.get("replay", {}).get("meta_batches", 0) for m in timed]
    # each timed iteration's FLOPs: a homogeneous pool's phases do the counted iteration's work, a mixed
    # pool's are counted again on that iteration's draw (eagerly, on a scratch copy of the state: FLOPs
    # depend on the draw, not on the weights); replay's scale with the meta-batches the iteration ran
    scratch = copy.deepcopy(state) if mixed else None
    per_iteration = []
    for m, draw in zip(timed, draws):
        f, nb = (flops, counted_batches) if draw is None else _count(w, _with_draw(scratch, draw), counting)
        f = {name: float(f.get(name, 0)) for name in PHASES}
        f["replay"] = f["replay"] / nb * m.get("replay", {}).get("meta_batches", 0) if nb else f["replay"]
        per_iteration.append(f)
    phases: dict[str, dict] = {}
    for name in PHASES:
        runs = [m["phase_s"].get(name, 0.0) for m in timed]
        work = [f[name] for f in per_iteration]
        phases[name] = {"seconds_mean": statistics.mean(runs), "seconds_median": statistics.median(runs),
                        "seconds": runs, "flops": statistics.mean(work), "flops_per_iteration": work,
                        "precision": precision if name in AUTOCAST_PHASES else plain,
                        **_rate(sum(work), sum(runs), phase_peak[name])}
    iteration_runs = [sum(m["phase_s"].values()) for m in timed]
    iteration_s = statistics.mean(iteration_runs)
    total_flops = sum(p["flops"] for p in phases.values())
    # the iteration's MFU: the time each phase's FLOPs take at its own precision's peak, over the iteration's
    counted = [n for n, p in phases.items() if p["flops"]]
    iteration_mfu = (sum(phases[n]["flops"] / (phase_peak[n] * 1e12) for n in counted) / iteration_s
                     if iteration_s and all(phase_peak[n] for n in counted) else None)
    for p in phases.values():
        p["share"] = p["seconds_mean"] / iteration_s if iteration_s else None

    # 4. meta-test
    mt_s, mt_flops = _metatest(w, state, metatest_tasks)
    shots = w.preset.metatest.shots
    metatest = {"tasks": metatest_tasks, "shots": list(shots), "seconds_per_task": mt_s,
                "flops_per_task": mt_flops, "precision": plain, **_rate(mt_flops, mt_s, plain_peak),
                "note": "per task = one task at each shot count"}

    if trace:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        # acc_events: one cycle either way; without it torch 2.11 warns that events are cleared between cycles
        with profile(activities=acts, acc_events=True) as prof:
            _iteration(w, state, engine)
        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(trace)
        if not Path(trace).is_file():  # torch's export can fail without raising
            raise FastFreeError(f"--trace {trace}: the trace was not written; choose another path")

    cfg = w.cfg
    after = cfg.iterations - cfg.warmup
    five_s, gen_s = phases["five"]["seconds_mean"], phases["generator"]["seconds_mean"]
    evals = sum(is_evaluation(it, cfg) for it in range(1, cfg.iterations + 1))  # as train_free evaluates
    extrapolation = {
        "iterations": cfg.iterations, "warmup": cfg.warmup,
        "data_recovery_hours": five_s * after / 3600,
        "training_hours": (iteration_s * after + (five_s + gen_s) * cfg.warmup + evals * cfg.val_tasks * mt_s) / 3600,
        "paper_data_recovery_hours": PAPER_RECOVERY_HOURS.get((w.preset.name, cfg.five.k)),
        "note": ("data recovery = mean FIVE time x post-warm-up iterations (what results.json counts; the "
                 "paper's GPU hours, measured on one RTX 3090); training = mean iteration x post-warm-up "
                 "iterations + FIVE and generator steps of the warm-up + meta-val evaluations; warm-up FIVE "
                 "(no adversarial term) is a little cheaper than timed here"),
    }
    return {
        "command": "profile run", "preset": w.preset.name,
        "engine": "reference" if options is None else {"engine": "fast", **options.__dict__},
        "dtype": str(w.dtype).removeprefix("torch."), "precision": precision,
        "peak_tflops": peak, "unautocast_precision": plain, "unautocast_peak_tflops": plain_peak, "peak_source": ("--peak-tflops" if peak_override else
                                             "fastfree.profiling.peaks (data sheet, dense)" if peak else
                                             "unknown for this device: MFU not computed (pass --peak-tflops)"),
        "teachers": w.teachers_source, "b": cfg.teachers_per_iteration, "k": cfg.five.k,
        "images_per_task": w.ways * cfg.five.images_per_class, "image_size": w.dataset.image_size,
        "iterations_timed": iterations, "warmup_iteration_s": warmup_s,
        # timed iterations whose FIVE compiled or captured a variant first (0-based; left out of the means
        # unless all were)
        "timed_iterations_with_setup": with_setup, "iterations_in_means": len(timed),
        "flops_per_draw": mixed,  # a mixed pool: each timed iteration's FLOPs counted on its own teacher draw
        "replay_meta_batches": batches, "replay_meta_batches_counted": counted_batches,
        "phases": phases,
        "iteration": {"seconds_mean": iteration_s, "seconds_median": statistics.median(iteration_runs),
                      "seconds": iteration_runs, "flops": total_flops, **_rate(total_flops, iteration_s, peak),
                      "mfu": iteration_mfu},
        "metatest": metatest, "extrapolation": extrapolation, "memory": memory,
        "telemetry": telemetry.summary(iterations), "trace": trace,
        # why the replay meta-batch runs eagerly although CUDA graphs were asked for (None: it did not)
        "replay_graph_fallback": getattr(getattr(engine, "meta_batch_fn", None), "fallback", None),
        "five_graph_fallbacks": getattr(engine, "five_graph_fallbacks", []),  # likewise for FIVE's epochs
        "flops_counted": ("FlopCounterMode on one eager iteration (in a mixed pool, again on each timed iteration's "
                          "teacher draw): convolutions and matmuls forward and backward, "
                          "and the fused Triton losses by their registered formulas; element-wise work, "
                          "normalisation and optimiser updates are not counted; the model's FLOPs: the generator "
                          "counted as upsample-then-convolve, which the fast engine runs fused in fewer"),
        "timing": "CUDA events (device time)" if device.type == "cuda" else "wall clock (CPU)",
        **meta,
    }


def to_markdown(r: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [f"FREE iteration profile: preset {r['preset']}, {r['device_name']}, {r['precision']}, "
             f"b={r['b']} k={r['k']}, {r['image_size']} px; mean of {r['iterations_in_means']} iterations "
             f"({r['timing']}); peak {f(r['peak_tflops'], '.1f')} TFLOP/s"
             + (f" ({', '.join(n for n, p in r['phases'].items() if p['precision'] == r['precision'])}; the other "
                f"phases and the meta-test in {r['unautocast_precision']}: "
                f"{f(r['unautocast_peak_tflops'], '.1f')} TFLOP/s)"
                if r["unautocast_precision"] != r["precision"] else ""),
             "",
             "| phase | ms | share | GFLOP | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|"]
    for name, p in r["phases"].items():
        lines.append(f"| {name} | {1e3 * p['seconds_mean']:.1f} | {100 * (p['share'] or 0):.0f}% | "
                     f"{p['flops'] / 1e9:.2f} | {f(p['tflop_per_s'], '.3f')} | {f(p['mfu'], '.2%')} |")
    it = r["iteration"]
    lines.append(f"| **iteration** | {1e3 * it['seconds_mean']:.1f} | 100% | {it['flops'] / 1e9:.2f} | "
                 f"{f(it['tflop_per_s'], '.3f')} | {f(it['mfu'], '.2%')} |")
    mt = r["metatest"]
    lines.append(f"| meta-test (per task) | {1e3 * mt['seconds_per_task']:.1f} | - | {mt['flops_per_task'] / 1e9:.2f} "
                 f"| {f(mt['tflop_per_s'], '.3f')} | {f(mt['mfu'], '.2%')} |")
    e = r["extrapolation"]
    paper = e["paper_data_recovery_hours"]
    lines += ["", f"Full protocol ({e['iterations']} iterations): data recovery {e['data_recovery_hours']:.4f} "
                  f"device-hours" + (f" (paper: {paper} GPU-hours on an RTX 3090)" if paper else "") +
                  f", training {e['training_hours']:.4f} device-hours.",
              f"Replay meta-batches per timed iteration: {r['replay_meta_batches']}. Warm-up iteration "
              f"(compile/capture): {r['warmup_iteration_s']:.1f} s."
              + (f" Timed iterations {r['timed_iterations_with_setup']} compiled or captured a FIVE variant first"
                 f"{' (all did: kept)' if r['iterations_in_means'] == r['iterations_timed'] else ': left out'}."
                 if r["timed_iterations_with_setup"] else ""),
              f"Memory: {', '.join(f'{k} {v:.0f}' for k, v in r['memory'].items() if isinstance(v, float))}.",
              "Telemetry: " + (f"{r['telemetry'].get('utilization_mean_pct', 0):.0f}% mean utilisation, "
                               f"{f(r['telemetry'].get('power_mean_w'), '.0f')} W mean, "
                               f"{f(r['telemetry'].get('energy_per_iteration_j'), '.1f')} J per iteration "
                               f"({r['telemetry'].get('energy_source')})" if r["telemetry"]["available"]
                               else r["telemetry"]["reason"]) + ".",
              f"FLOPs: {r['flops_counted']}."]
    return "\n".join(lines)
