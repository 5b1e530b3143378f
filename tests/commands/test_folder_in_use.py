"""`fastfree train` and `pretrain` on a folder another command is using: refused before anything is
read or written, naming the other command (fastfree/folder_lock.py)."""

import shutil

from fastfree.cli import main
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL


def test_train_on_a_run_in_use_is_refused_and_changes_nothing(run, tmp_path, holder, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    def files():  # the run's own, not the lock's
        return {f.name: f.read_bytes() for f in run_dir.iterdir() if f.is_file() and not f.name.startswith(".")}

    before = files()
    holder(run_dir)
    flags = ["train", "--pool", str(run[0].parent / "pool"), "--run-dir", str(run_dir), "--resume", *TRAIN, *SMALL]
    flags[flags.index("--iterations") + 1] = "4"
    assert main(flags) == 2
    assert "is in use by `fastfree train`" in capsys.readouterr().err
    assert files() == before


def test_pretrain_into_a_pool_in_use_is_refused(tmp_path, holder, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    holder(pool)
    assert main(["pretrain", "--teachers", "1", "--epochs", "1", "--out", str(pool), "--device", "cpu", *SMALL]) == 2
    assert "is in use by" in capsys.readouterr().err
    assert not (pool / "manifest.json").exists() and not (pool / ".progress").exists()
