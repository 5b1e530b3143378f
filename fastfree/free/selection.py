"""Model selection on meta-val, per shot count (never on meta-test).

The paper reports each shot setting as an experiment of its own (the authors' code replays tasks
with that setting's shot count and keeps the best of its evaluations), so the learner reported
for K shots is the one with the best K-shot meta-val accuracy. One run serves both settings, and
1- and 5-shot may peak at different iterations (measured: the two-domain run's 1-shot meta-val
accuracy peaked at iteration 50 and 5-shot at 110; the demo's at 60 and 50), so one pick on
the mean of the two gives up one setting's accuracy for the other's.

best_learner.pt holds {"shots": {"1": {"iteration", "val", "learner"}, "5": {...}}}. A file from
before per-shot selection ({"iteration", "val", "learner"}: one pick on the mean over shot
counts) is read as one learner for every shot count (key None).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fastfree.errors import FastFreeError
from fastfree.free.atomic import atomic_torch_save
from fastfree.read_back import load_torch

BEST = "best_learner.pt"


@dataclass(frozen=True)
class Selected:
    iteration: int
    val: float  # meta-val accuracy (%) at that shot count; for a legacy file the mean over shot counts
    learner: dict  # the meta-learner's state dict


def improved_shots(best: dict[str, dict], accuracies: dict[int, float], iteration: int) -> dict[str, dict]:
    """The shot counts whose meta-val accuracy beats the best so far, with their new records (pure)."""
    return {str(s): {"iteration": iteration, "val": float(a)} for s, a in accuracies.items()
            if a > best.get(str(s), {"val": -1.0})["val"]}


def is_legacy(best: dict) -> bool:
    """A checkpoint's `best` from before per-shot selection: {"iteration", "val"}."""
    return "iteration" in best


def load_selection(path: Path, device: torch.device | str = "cpu") -> dict:
    """best_learner.pt as saved (a damaged file is refused, naming what can still be used)."""
    return load_torch(path, "Restore it from a copy of the run; meanwhile its last and kept learners can be "
                      "meta-tested (--learner last, or every)", device)


def write_selected(path: Path, learner_state: dict, improved: dict[str, dict]) -> None:
    """Record the current learner for the improved shot counts, keeping the others' picks."""
    shots = dict(load_selection(path).get("shots", {})) if path.is_file() else {}
    cpu_state = {k: v.detach().cpu().clone() for k, v in learner_state.items()}
    for key, record in improved.items():
        shots[key] = {**record, "learner": cpu_state}
    atomic_torch_save({"shots": shots}, path)


def read_selected(path: Path, device: torch.device | str = "cpu") -> dict[int | None, Selected]:
    """Per shot count, the selected learner; {None: ...} for a legacy single pick."""
    if not path.is_file():
        return {}
    saved = load_selection(path, device)
    if "shots" not in saved:
        return {None: Selected(int(saved["iteration"]), float(saved["val"]), saved["learner"])}
    return {int(k): Selected(int(v["iteration"]), float(v["val"]), v["learner"]) for k, v in saved["shots"].items()}


def last_label(iteration: int) -> str:
    """How outputs name a run's last learner (run_learner, learner files)."""
    return f"FREE (last, iteration {iteration})"


def selected_label(selected: dict[int | None, Selected]) -> str:
    its = {s.iteration for s in selected.values()}
    if len(its) == 1:
        return f"FREE (selected on meta-val, iteration {its.pop()})"
    picks = ", ".join(f"{k}-shot at {v.iteration}" for k, v in sorted(selected.items()))
    return f"FREE (selected on meta-val per shot count: {picks})"


def for_shots(selected: dict, shots: int):
    """The pick for `shots` (a legacy file's single pick serves every shot count)."""
    if shots in selected:
        return selected[shots]
    if None in selected:
        return selected[None]
    raise FastFreeError(f"no meta-learner was selected for {shots}-shot tasks (the run's meta-val measured "
                        f"{', '.join(f'{k}-shot' for k in sorted(selected))}): meta-test those shot counts, or the "
                        "last learner (--learner last)")


__all__ = ["BEST", "Selected", "for_shots", "improved_shots", "is_legacy", "last_label", "load_selection",
           "read_selected", "selected_label", "write_selected"]
