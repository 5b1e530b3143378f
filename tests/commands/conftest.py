"""A small `fastfree train` run shared by the tests of the commands that read runs (eval --run, adapt).
Those tests only read it (`eval --learner every` adds its progress, RUN/metatests)."""

import json
import shutil

import pytest
import torch

from fastfree.cli import main
from fastfree.free.selection import BEST
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


@pytest.fixture(scope="session")
def one_pick_run(run, tmp_path_factory):
    """A copy of `run` whose 1- and 5-shot meta-val picks are one learner, by construction: the 5-shot
    pick made the 1-shot one, with its own 5-shot meta-val at that iteration. Whether the run's own
    picks coincide depends on the last bits of a CPU's arithmetic (two meta-val tasks); the tests of one
    file for both shot counts need them to."""
    copy = tmp_path_factory.mktemp("one_pick") / "run"
    shutil.copytree(run[0], copy)
    saved = torch.load(copy / BEST, weights_only=True)
    one = saved["shots"]["1"]
    # a metrics line's "iteration" is 0-based: the learner selected at iteration i was evaluated on line i - 1
    [record] = [m for m in map(json.loads, (copy / "metrics.jsonl").read_text().splitlines())
                if m["iteration"] == one["iteration"] - 1]
    saved["shots"]["5"] = {"iteration": one["iteration"], "val": record["val"]["5"][0], "learner": one["learner"]}
    torch.save(saved, copy / BEST)
    return copy, run[1]
