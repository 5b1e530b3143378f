"""A small `fastfree train` run shared by the tests of the commands that read runs (eval --run, adapt).
Those tests only read it (`eval --learner every` adds its progress, RUN/metatests)."""

import json

import pytest

from fastfree.cli import main
from tests.commands.small_run import TRAIN
from tests.test_cli import SMALL


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """(run directory, the run's reported meta-test results)."""
    root = tmp_path_factory.mktemp("run")
    pool = root / "pool"
    assert main(["pretrain", "--teachers", "2", "--epochs", "1", "--batch-size", "32", "--out", str(pool),
                 "--device", "cpu", *SMALL]) == 0
    out = root / "t.json"
    assert main(["train", "--pool", str(pool), "--run-dir", str(root / "run"), "--json", str(out), *TRAIN,
                 *SMALL]) == 0
    return root / "run", json.loads(out.read_text())["results"]
