"""Running out of memory, in words: which phase ran out, what is kept, and the flags that need less.

Why: torch's CUDA `OutOfMemoryError`, its CPU allocator's "can't allocate memory" and cuDNN's or
cuBLAS's failed allocations reached the user as a traceback through the engine, which names
neither the phase nor the setting to change. The phase is read from the modules the error passed
through (the innermost of fastfree's pool, meta-test, FIVE, BELL and replay code), so the advice
names the flags that bound that phase's memory, and only flags the command has. Settings that are
part of a run's or a pool's configuration cannot change on `--resume` (it refuses them), so the
message says when a smaller setting means starting again and when the work done is kept.
"""

from __future__ import annotations

import re
from types import TracebackType

# Messages of allocation failures that do not come as torch.OutOfMemoryError (cuDNN, cuBLAS and
# CUDA runtime errors are plain RuntimeErrors; the CPU allocator's too)
_ALLOCATION_FAILED = ("can't allocate memory", "CUDA error: out of memory", "ALLOC_FAILED")

# (module prefix, phase): the innermost module of the traceback that starts with a prefix names the phase
_PHASES = (
    ("fastfree.pool.pretrain", "pool"), ("fastfree.metatest", "metatest"),  # not pool loading (pool.store)
    ("fastfree.engine.five", "five"), ("fastfree.free.five", "five"),
    ("fastfree.engine.bell", "bell"), ("fastfree.free.bell", "bell"),
    ("fastfree.engine.replay", "replay"), ("fastfree.free.replay", "replay"), ("fastfree.free.memory", "bank"),
)
_NOTHING_SMALLER = "free memory (other programs on the device), or run it on a device with more"
_PHASE_NAMES = {"pool": "pretraining the teacher pool", "metatest": "meta-val / meta-test adaptation",
                "five": "FIVE (the k-step inversion of the sampled teachers)", "bell": "BELL (distillation)",
                "replay": "cross-task replay", "bank": "the memory bank (recovered images kept for replay)"}


def _allocation_failed(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    import torch  # loaded by every command that can run out of memory

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _ALLOCATION_FAILED)


def allocation_failure(error: BaseException) -> BaseException | None:
    """The allocation failure `error` is, or was raised from (torch.compile wraps an error of its code
    generation, e.g. autotuning out of memory, in its own with the original as the cause); None: neither."""
    for _ in range(8):  # a cause chain is short; a cycle must not hang the error path
        if error is None or _allocation_failed(error):
            return error
        error = error.__cause__
    return None


def is_out_of_memory(error: BaseException) -> bool:
    return allocation_failure(error) is not None


def phase_of(tb: TracebackType | None) -> str | None:
    """The phase of the innermost fastfree frame that belongs to one (pure; None: none did)."""
    phase = None
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        for prefix, p in _PHASES:
            if name == prefix or name.startswith(prefix + "."):
                phase = p
        tb = tb.tb_next
    return phase


def _what_ran_out(failure: BaseException) -> tuple[str, bool]:
    """'out of [GPU] memory (torch's sentence)', without its documentation link, and whether a GPU's."""
    text = str(failure).split(" See documentation for Memory Management")[0].strip()
    text = re.sub(r"^\[enforce fail at [^\]]*\] *(err == 0\. *)?", "", text)  # the CPU allocator's source line
    gpu = any(mark in text for mark in ("CUDA", "CUDNN", "CUBLAS"))
    return f"out of {'GPU memory' if gpu else 'memory'}" + (f" ({text})" if text else ""), gpu


def _preset(args):
    from fastfree.config import PRESETS

    return PRESETS[args.preset]  # train, pretrain and eval, which ask for it, all take --preset


def _train_advice(args, phase: str | None, gpu: bool) -> str:
    preset = _preset(args)
    if phase == "metatest":
        chunk = args.eval_chunk or preset.metatest.chunk
        if chunk == 1:
            return f"meta-val and meta-test adapt one task at a time already: {_NOTHING_SMALLER}"
        return (f"meta-val and meta-test adapt {chunk} tasks at once: `--eval-chunk {max(1, chunk // 4)}` needs "
                f"less memory and meets the same tasks. It may change on --resume: `fastfree train ... --resume "
                f"--eval-chunk {max(1, chunk // 4)}` continues the run from its last checkpoint")
    if phase == "pool":
        return ("pretrain the pool on its own, where a smaller --group-size (GPU), fewer --threads (CPU) or a "
                "smaller --batch-size needs less memory: `fastfree pretrain --out POOL` with this command's preset "
                "and data flags; then pass `--pool POOL` to train")
    b = args.teachers_per_iteration or preset.free.teachers_per_iteration
    kept = args.memory_per_class or preset.free.memory_per_class
    if phase == "bank":  # it grows a block of classes at a time, `kept` images per class
        return (f"fewer images kept per class need less memory (--memory-per-class, now {kept}; the bank holds "
                "that many for every class recovered). It is part of the run's configuration, which --resume "
                "keeps: start again with it in another --run-dir")
    flags = [f"fewer teachers per iteration (--teachers-per-iteration, now {b})"]
    fast = args.engine != "reference"
    if fast and phase in (None, "five", "bell") and not args.amp:
        flags.append("--amp (bf16 activations in FIVE and BELL)")
    if fast and phase in (None, "five") and args.teacher_map != "loop":
        flags.append("--teacher-map loop (FIVE's teachers one at a time instead of one vmapped batch)")
    if gpu and fast and phase in (None, "five", "replay") and args.cuda_graphs is not False:
        flags.append("--no-cuda-graphs (a captured graph keeps its own memory)")
    if phase in (None, "replay") and not args.replay_first_order:
        flags.append("--replay-first-order (no second-order graph through replay's inner steps)")
    if phase is None:
        flags.append(f"fewer images kept per class in the memory bank (--memory-per-class, now {kept})")
    return ("settings that need less memory: " + "; ".join(flags) + ". They are part of the run's configuration, "
            "which --resume keeps: start again with them in another --run-dir (an iteration's shapes are those of "
            "the first one; only the memory bank of recovered images grows, as classes are recovered)")


def _pretrain_advice(args, gpu: bool) -> str:
    import torch

    from fastfree.device import resolve_pool_engine

    preset = _preset(args)
    group = args.group_size or preset.pretrain.group_size
    batch = args.batch_size or preset.pretrain.batch_size
    engine = resolve_pool_engine(args.engine, torch.device("cuda" if gpu else "cpu"))
    restart = "start again (--overwrite, or another --out)"  # what a changed pool record takes
    if engine == "batched":
        return (f"{group} teachers train together in one vmapped step: fewer (--group-size {max(1, group // 4)}) or "
                f"a smaller --batch-size (now {batch}) need less memory. Both are part of the pool's record, which "
                f"--resume keeps: {restart}")
    if engine == "threads":
        threads = torch.get_num_threads()
        return (f"{threads} teachers train side by side, one per thread: fewer threads (--threads "
                f"{max(1, threads // 2)}) need less memory and may change on --resume, which keeps the teachers "
                f"that finished; a smaller --batch-size (now {batch}) too, but it is part of the pool's record: "
                f"{restart}")
    return f"a smaller --batch-size (now {batch}) needs less memory; it is part of the pool's record: {restart}"


def _advice(args, phase: str | None, gpu: bool) -> str:
    command = args.command
    if command == "train":
        return _train_advice(args, phase, gpu)
    if command == "pretrain":
        return _pretrain_advice(args, gpu)
    if command == "eval":
        chunk = args.chunk or _preset(args).metatest.chunk
        if chunk == 1:
            return f"one task adapts at a time already: {_NOTHING_SMALLER}"
        return (f"{chunk} tasks adapt together: fewer need less memory and give the same tasks "
                f"(--chunk {chunk // 4 or 1})")
    if command == "adapt":
        return (f"the query images pass {args.chunk} at a time: a smaller --chunk needs less memory, with the same "
                f"predictions (up to rounding)")
    if command in ("bench", "profile"):
        return ("a smaller setting needs less: --teachers-per-iteration, --metatest-tasks"
                + (", or --only to time fewer phases" if command == "bench" else ""))
    return _NOTHING_SMALLER


def out_of_memory_message(error: BaseException, args) -> str | None:
    """The message for an allocation failure (None: `error` is another error)."""
    failure = allocation_failure(error)
    if failure is None:
        return None
    phase = phase_of(error.__traceback__)
    where = f" in {_PHASE_NAMES[phase]}" if phase else ""
    what, gpu = _what_ran_out(failure)
    other = " Other processes on the GPU hold memory too: `nvidia-smi` lists them." if gpu else ""
    return f"{what}{where}: {_advice(args, phase, gpu)}.{other}"


__all__ = ["allocation_failure", "is_out_of_memory", "out_of_memory_message", "phase_of"]
