"""What counts as running out of memory, which phase it was, and the advice per command (pure parts of
fastfree/out_of_memory.py; the commands themselves: tests/commands/test_out_of_memory.py)."""

import argparse

import pytest
import torch

from fastfree.cli import build_parser
from fastfree.out_of_memory import allocation_failure, is_out_of_memory, out_of_memory_message, phase_of

CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.02 GiB "
            "is free. Of the allocated memory 75.1 GiB is allocated by PyTorch. See documentation for Memory "
            "Management "
            "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")


def cpu_allocation_failure() -> RuntimeError:
    try:
        torch.empty(2 ** 50, dtype=torch.uint8)  # 1 PiB: more than any machine's address space
    except RuntimeError as e:
        return e
    pytest.fail("a 1 PiB allocation succeeded")


def test_allocation_failures_count_and_other_errors_do_not():
    assert is_out_of_memory(cpu_allocation_failure())  # the CPU allocator's own error, not a made-up one
    assert is_out_of_memory(torch.OutOfMemoryError(CUDA_OOM))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_a_failure_wrapped_by_another_error_counts_and_its_sentence_is_shown():
    cause = cpu_allocation_failure()
    try:
        raise RuntimeError("backend='inductor' raised: see the cause") from cause  # as torch.compile wraps
    except RuntimeError as wrapped:
        assert allocation_failure(wrapped) is cause
        assert "DefaultCPUAllocator: can't allocate" in out_of_memory_message(wrapped, _args("train"))
    unrelated = RuntimeError("wrapped")
    unrelated.__cause__ = KeyError("x")
    assert allocation_failure(unrelated) is None


def _raised_in(module: str):
    """An error raised from a function defined in `module` (as its frames name it), called from here."""
    namespace = {"__name__": module}
    exec("def boom():\n    raise MemoryError()\n", namespace)
    try:
        namespace["boom"]()
    except MemoryError as e:
        return e


@pytest.mark.parametrize("module, phase", [
    ("fastfree.engine.five", "five"), ("fastfree.free.five", "five"), ("fastfree.engine.bell", "bell"),
    ("fastfree.free.replay", "replay"), ("fastfree.free.memory", "bank"), ("fastfree.metatest.adapt", "metatest"),
    ("fastfree.pool.pretrain", "pool"), ("fastfree.pool.store", None),
    ("fastfree.engine.trainer", None), ("fastfree.engine.fivefold", None), ("tests.x", None)])
def test_the_phase_is_the_innermost_fastfree_module_that_belongs_to_one(module, phase):
    assert phase_of(_raised_in(module).__traceback__) == phase


def test_the_innermost_phase_wins():
    namespace = {"__name__": "fastfree.free.bell", "inner": lambda: _reraise(_raised_in("fastfree.free.replay"))}
    exec("def outer():\n    inner()\n", namespace)
    with pytest.raises(MemoryError) as info:
        namespace["outer"]()
    assert phase_of(info.value.__traceback__) == "replay"


def _reraise(e):
    raise e


def _args(*argv) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_not_out_of_memory_gives_no_message():
    assert out_of_memory_message(RuntimeError("shape mismatch"), _args("train")) is None


def test_the_message_keeps_torchs_sentence_without_the_link_and_names_the_gpu():
    message = out_of_memory_message(torch.OutOfMemoryError(CUDA_OOM), _args("eval", "--method", "random"))
    assert message.startswith("out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert "See documentation" not in message and "nvidia-smi" in message
    assert "50 tasks adapt together" in message and "--chunk 12" in message
    cpu = out_of_memory_message(cpu_allocation_failure(), _args("eval", "--method", "random", "--chunk", "8"))
    assert cpu.startswith("out of memory (") and "can't allocate memory" in cpu and "nvidia-smi" not in cpu
    assert "8 tasks adapt together" in cpu and "--chunk 2" in cpu
    one = out_of_memory_message(MemoryError(), _args("eval", "--method", "random", "--chunk", "1"))
    assert "one task adapts at a time already" in one and "--chunk" not in one
    val = out_of_memory_message(_raised_in("fastfree.metatest.adapt"), _args("train", "--eval-chunk", "1"))
    assert "one task at a time already" in val and "--eval-chunk" not in val


def test_train_advice_names_only_the_flags_that_help_in_that_phase_and_are_not_set():
    five = _raised_in("fastfree.engine.five")
    message = out_of_memory_message(five, _args("train"))
    assert " in FIVE " in message and "--teachers-per-iteration, now 4" in message
    assert "--amp" in message and "--teacher-map loop" in message and "graphs" not in message  # none on a CPU
    namespace = {"__name__": "fastfree.engine.five", "error": torch.OutOfMemoryError(CUDA_OOM)}
    exec("def boom():\n    raise error\n", namespace)
    with pytest.raises(torch.OutOfMemoryError) as on_gpu:
        namespace["boom"]()
    assert "--no-cuda-graphs" in out_of_memory_message(on_gpu.value, _args("train"))
    assert "--replay-first-order" not in message and "another --run-dir" in message
    message = out_of_memory_message(five, _args("train", "--amp", "--teacher-map", "loop", "--no-cuda-graphs",
                                                "--teachers-per-iteration", "2"))
    assert "now 2" in message and "--amp" not in message and "--teacher-map" not in message and "graphs" not in message
    assert "--amp" not in out_of_memory_message(five, _args("train", "--engine", "reference"))
    replay = out_of_memory_message(_raised_in("fastfree.engine.replay"), _args("train"))
    assert "--replay-first-order" in replay and "--amp" not in replay
    bell = out_of_memory_message(_raised_in("fastfree.free.bell"), _args("train"))
    assert " in BELL " in bell and "--amp" in bell and "--teacher-map" not in bell
    val = out_of_memory_message(_raised_in("fastfree.metatest.protocol"), _args("train", "--eval-chunk", "20"))
    assert "adapt 20 tasks at once" in val and "--resume --eval-chunk 5" in val
    bank = out_of_memory_message(_raised_in("fastfree.free.memory"), _args("train", "--memory-per-class", "100"))
    assert " in the memory bank " in bank and "--memory-per-class, now 100" in bank and "--amp" not in bank
    assert "--memory-per-class, now 400" in out_of_memory_message(_raised_in("tests.x"), _args("train"))
    assert "--memory-per-class" not in message  # FIVE's own: not the bank's
    pool = out_of_memory_message(_raised_in("fastfree.pool.pretrain"), _args("train"))
    assert "`fastfree pretrain --out POOL`" in pool and "--pool POOL" in pool


def test_pretrain_advice_follows_the_engine_that_ran_out(monkeypatch):
    gpu = out_of_memory_message(torch.OutOfMemoryError(CUDA_OOM),
                                _args("pretrain", "--group-size", "8", "--batch-size", "64"))
    assert "8 teachers train together" in gpu and "--group-size 2" in gpu and "now 64" in gpu
    assert "--overwrite" in gpu and "--threads" not in gpu
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # what setup(args) left for the threads engine
    threads = out_of_memory_message(MemoryError(), _args("pretrain"))
    assert "4 teachers train side by side" in threads and "--threads 2" in threads and "--group-size" not in threads
    one = out_of_memory_message(MemoryError(), _args("pretrain", "--engine", "reference"))
    assert "--batch-size (now 128)" in one and "--threads" not in one and "--group-size" not in one


@pytest.mark.gpu
def test_a_real_cuda_out_of_memory_reads_as_gpu_memory():
    try:
        torch.empty(2 ** 45, dtype=torch.uint8, device="cuda")  # 32 TiB: more than any GPU
    except torch.OutOfMemoryError as e:
        message = out_of_memory_message(e, _args("eval", "--method", "random"))
    else:
        pytest.fail("a 32 TiB allocation succeeded")
    assert message.startswith("out of GPU memory (CUDA out of memory. Tried to allocate 32.00 TiB")
    assert "nvidia-smi" in message and "--chunk 12" in message and "See documentation" not in message
