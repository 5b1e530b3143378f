"""`fastfree train` on a disk that fills up: the command stops with the file it could not write and the
fix (no traceback), the run's last checkpoint stays whole, and --resume continues once there is room."""

import json
import os
import shutil
from pathlib import Path

import pytest

from fastfree.cli import main
from fastfree.free.run import CHECKPOINT, completed_iterations
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL

FULL = Path("/dev/full")


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_at_a_checkpoint_is_named_and_resume_continues_after(run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    flags = ["train", "--pool", str(run[0].parent / "pool"), "--run-dir", str(run_dir), "--resume", *TRAIN, *SMALL]
    flags[flags.index("--iterations") + 1] = "4"
    os.symlink(FULL, run_dir / (CHECKPOINT + ".tmp"))  # the next checkpoint's write fails as on a full disk
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"could not write {run_dir / CHECKPOINT}: " in err and "--resume" in err
    assert completed_iterations(run_dir) == 3  # the checkpoint before it, whole
    out = tmp_path / "t.json"
    assert main([*flags, "--json", str(out)]) == 0  # room again: the link was removed with the failed write
    assert completed_iterations(run_dir) == 4 and json.loads(out.read_text())["iterations"] == 4
