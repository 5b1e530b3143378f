"""The meta-learner of every meta-val evaluation, kept in the run directory.

    run_dir/learners/iter_XXXXX.pt   {"iteration", "val": {shots: [mean, ci95]}, "learner": state dict}

Selection never reads them (it is on meta-val, free/selection.py). They let a run be analysed
afterwards: `fastfree eval --run RUN --method learner --learner every` meta-tests each on the
same tasks, which measures the published code's selection (the best of its evaluations on the
meta-test split: optimistic, as it picks on the test set) beside meta-val's. A Conv4-32
learner is about 125 KB, so 50 evaluations keep about 6 MB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fastfree.errors import FastFreeError
from fastfree.free.atomic import atomic_torch_save
from fastfree.read_back import load_torch

LEARNERS = "learners"
_NAME = re.compile(r"iter_(\d+)\.pt$")


@dataclass(frozen=True)
class KeptLearner:
    iteration: int
    val: dict[str, list[float]]  # shot count -> [meta-val mean (%), 95% interval]
    learner: dict  # state dict


def keep_learner(run_dir: Path, iteration: int, val: dict[str, list[float]], learner_state: dict) -> None:
    """Atomically, so a kill leaves it whole or absent (a resumed run writes it again, equal)."""
    state = {k: v.detach().cpu().clone() for k, v in learner_state.items()}
    (run_dir / LEARNERS).mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"iteration": int(iteration), "val": val, "learner": state},
                      kept_path(run_dir, iteration))


def kept_path(run_dir: Path, iteration: int) -> Path:
    """Where the learner of the meta-val evaluation at `iteration` is kept."""
    return Path(run_dir) / LEARNERS / f"iter_{iteration:05d}.pt"


def drop_kept_after(run_dir: Path, iteration: int) -> None:
    """Remove the learners kept after `iteration` (a resumed run's checkpoint; 0 for a fresh start): they
    belong to iterations that run again, or to an earlier attempt that never checkpointed."""
    folder = Path(run_dir) / LEARNERS
    for p in folder.glob("iter_*.pt") if folder.is_dir() else []:
        m = _NAME.search(p.name)
        if m and int(m.group(1)) > iteration:
            p.unlink()


def load_kept(path: Path, device: torch.device | str = "cpu") -> dict:
    """One kept learner's file as saved (a damaged file is refused with what to do)."""
    return load_torch(path, "Restore it from a copy of the run, or delete it: that evaluation's learner is then "
                      "left out (--learner every)", device)


def read_kept(run_dir: Path, device: torch.device | str = "cpu") -> list[KeptLearner]:
    """Every kept learner, by iteration."""
    folder = Path(run_dir) / LEARNERS
    paths = [p for p in folder.glob("iter_*.pt") if _NAME.search(p.name)] if folder.is_dir() else []
    if not paths:
        raise FastFreeError(f"{folder} holds no meta-learners: runs keep one at every meta-val evaluation since "
                            "this version; meta-test the selected or the last learner (--learner selected|last)")
    out = []
    for p in paths:
        d = load_kept(p, device)
        out.append(KeptLearner(int(d["iteration"]), {str(k): list(v) for k, v in d["val"].items()}, d["learner"]))
    return sorted(out, key=lambda k: k.iteration)


__all__ = ["LEARNERS", "KeptLearner", "drop_kept_after", "keep_learner", "kept_path", "load_kept", "read_kept"]
