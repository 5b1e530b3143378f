"""Commands that run out of memory stop with the phase and the flags that need less (no traceback), and
the advice works: a run whose meta-val ran out resumes with a smaller --eval-chunk, an eval runs with a
smaller --chunk. The failures are the CPU allocator's own (a 1 PiB request) raised where the phase
allocates; a GPU's differ only in torch's sentence (tests/test_out_of_memory.py)."""

import json
import shutil

import pytest
import torch

import fastfree.engine.bell
import fastfree.engine.five
import fastfree.engine.replay
import fastfree.metatest.protocol
import fastfree.pool.pretrain
from fastfree.cli import main
from fastfree.free.run import completed_iterations
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL


def allocate_too_much(*args, **kwargs):
    torch.empty(2 ** 50, dtype=torch.uint8)  # the allocator refuses: RuntimeError "can't allocate memory"


def failing_with_more_than_one_task(logits, labels):
    if logits.shape[0] > 1:  # [tasks, queries, ways]: one task at a time fits
        allocate_too_much()
    return fastfree.metatest.adapt.query_accuracy(logits, labels)


@pytest.mark.parametrize("module, name, phase, flag", [
    (fastfree.engine.five, "adam_step", "in FIVE", "--teacher-map loop"),
    (fastfree.engine.bell, "adam_step", "in BELL", "--amp"),
    (fastfree.engine.replay, "normalized_tasks", "in cross-task replay", "--replay-first-order"),
])
def test_training_out_of_memory_names_the_phase_and_its_flags(run, tmp_path, capsys, monkeypatch, module, name,
                                                               phase, flag):
    monkeypatch.setattr(module, name, allocate_too_much)
    flags = ["train", "--pool", str(run[0].parent / "pool"), "--run-dir", str(tmp_path / "run"), *TRAIN, *SMALL]
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "fastfree train: error: out of memory (DefaultCPUAllocator" in err
    assert phase in err and flag in err and "--teachers-per-iteration, now 2" in err and "another --run-dir" in err


def test_a_run_out_of_memory_in_meta_val_resumes_with_a_smaller_eval_chunk(run, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    flags = ["train", "--pool", str(run[0].parent / "pool"), "--run-dir", str(run_dir), "--resume", *TRAIN, *SMALL]
    flags[flags.index("--iterations") + 1] = "4"
    monkeypatch.setattr(fastfree.metatest.protocol, "query_accuracy", failing_with_more_than_one_task)
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "in meta-val / meta-test adaptation" in err
    assert "adapt 50 tasks at once" in err and "--resume --eval-chunk 12" in err
    assert completed_iterations(run_dir) == 3  # the checkpoint before it
    out = tmp_path / "t.json"
    assert main([*flags, "--eval-chunk", "1", "--json", str(out)]) == 0  # not part of the run's configuration
    assert completed_iterations(run_dir) == 4 and json.loads(out.read_text())["iterations"] == 4


def test_a_run_out_of_memory_in_its_final_meta_test_resumes_to_its_results(run, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    (run_dir / "results.json").unlink()  # as before the meta-test ran
    flags = ["train", "--pool", str(run[0].parent / "pool"), "--run-dir", str(run_dir), "--resume", *TRAIN, *SMALL]

    def failing_above_two_tasks(logits, labels):  # meta-val's 2 tasks fit, meta-test's 3 do not
        if logits.shape[0] > 2:
            allocate_too_much()
        return fastfree.metatest.adapt.query_accuracy(logits, labels)

    monkeypatch.setattr(fastfree.metatest.protocol, "query_accuracy", failing_above_two_tasks)
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "in meta-val / meta-test adaptation" in err and "--eval-chunk 12" in err
    assert not (run_dir / "results.json").exists()
    assert main([*flags, "--eval-chunk", "2"]) == 0  # training was done: only the meta-test runs
    assert json.loads((run_dir / "results.json").read_text())["results"] == run[1]  # the same tasks, the same numbers


def test_eval_out_of_memory_names_chunk_and_a_smaller_one_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fastfree.metatest.protocol, "query_accuracy", failing_with_more_than_one_task)
    flags = ["eval", "--method", "random", "--tasks", "3", "--shots", "1", "--steps", "1", "--device", "cpu", *SMALL]
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "50 tasks adapt together" in err and "--chunk 12" in err
    assert main([*flags, "--chunk", "1"]) == 0


def test_pretrain_out_of_memory_names_the_pool_phase_and_batch_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fastfree.pool.pretrain, "epoch_order", allocate_too_much)
    assert main(["pretrain", "--teachers", "2", "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "p"),
                 "--device", "cpu", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "in pretraining the teacher pool" in err and "--batch-size (now 32)" in err


def test_an_error_that_is_not_about_memory_keeps_its_traceback(run, tmp_path, monkeypatch):
    def shape_bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(fastfree.engine.five, "adam_step", shape_bug)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["train", "--pool", str(run[0].parent / "pool"), "--run-dir", str(tmp_path / "run"), *TRAIN, *SMALL])
