"""A `fastfree train` run's meta-learner read back from its run directory (`fastfree eval --run`).

config.json records the data the run learned from, which fixes the learner's input space (its
image size and normalisation: the data set's, or for several domains the largest size and the
normalisation of the first domain at it, as in training); best_learner.pt holds the learner
selected on meta-val, checkpoint.pt the last one. So a run can be meta-tested again later on
more tasks, on meta-val, or on another data set, in the input space it was trained in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastfree.commands.common import load_on_device
from fastfree.commands.train_domains import load_domains
from fastfree.data.domains import MultiDomainData
from fastfree.data.sources import DataConfig
from fastfree.data.split import FewShotDataset, Normalization
from fastfree.errors import FastFreeError
from fastfree.free.run import BEST, CHECKPOINT
from fastfree.metatest.adapt import functional_template
from fastfree.models.conv4 import Conv4

WHICH = ("selected", "last")


@dataclass
class RunLearner:
    data: FewShotDataset | MultiDomainData  # the run's data (its splits, the learner's input space)
    preset: str
    ways: int
    width: int
    learner: nn.Module | None  # None when only the run's shape is needed (a Random baseline)
    label: str  # e.g. "FREE (selected on meta-val, iteration 50)"
    iteration: int | None

    @property
    def image_size(self) -> int:
        return self.data.image_size

    @property
    def normalization(self) -> Normalization:
        return self.data.normalization


def read_run_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not path.is_file():
        raise FastFreeError(f"no config.json in {run_dir}: --run takes the directory a `fastfree train` run wrote "
                            "(its --run-dir, by default runs/<preset>)")
    return json.loads(path.read_text())


def run_data(config: dict, device: torch.device) -> FewShotDataset | MultiDomainData:
    """The run's data, loaded as training loaded it (several domains: combined the same way)."""
    if config.get("domains"):
        return load_domains([DataConfig(**d) for d in config["domains"]], device)
    return load_on_device(DataConfig(**config["data"]), device)[0]


def _learner_state(run_dir: Path, which: str, device: torch.device) -> tuple[dict, int, str]:
    if which not in WHICH:
        raise FastFreeError(f"unknown learner {which!r}: use one of {', '.join(WHICH)}")
    if which == "selected":
        path = run_dir / BEST
        if not path.is_file():
            raise FastFreeError(f"{run_dir} has no {BEST} yet (it is written at the first meta-val evaluation after "
                                "warm-up): evaluate the last learner with --learner last, or train further")
        saved = torch.load(path, map_location=device, weights_only=True)
        it = int(saved["iteration"])
        return saved["learner"], it, f"FREE (selected on meta-val, iteration {it})"
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise FastFreeError(f"{run_dir} has no {CHECKPOINT}: the run has not completed a checkpointed iteration")
    saved = torch.load(path, map_location=device, weights_only=True)
    it = int(saved["iteration"])
    return saved["learner"], it, f"FREE (last, iteration {it})"


def load_run_learner(run_dir: str | Path, which: str | None, device: torch.device,
                     dtype: torch.dtype = torch.float32) -> RunLearner:
    """The run's data and, unless `which` is None, its selected or last meta-learner."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    width = int(config["free"]["learner_width"])
    data = run_data(config, device)
    learner, label, it, ways = None, "", None, None
    if which is not None:
        state, it, label = _learner_state(run_dir, which, device)
        ways = int(state["classifier.weight"].shape[0])
        learner = functional_template(Conv4(ways, width, data.image_size)).to(device=device, dtype=dtype)
        learner.load_state_dict(state)
    return RunLearner(data, config["preset"], ways or 0, width, learner, label, it)


__all__ = ["WHICH", "RunLearner", "load_run_learner", "read_run_config", "run_data"]
