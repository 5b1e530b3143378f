"""`fastfree export --run RUN --out FILE.safetensors`: a run's meta-learner as one portable file.

The learner selected on meta-val (or the last one), its weights as safetensors and, in the file's
metadata, the card `fastfree adapt --learner-file` and `load_learner` need: shape, input space,
the run's adaptation (fastfree/free/learner_file.py). One run selects a learner per shot count;
when 1- and 5-shot picked different iterations, `--shots K` says which to export.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from fastfree import __version__
from fastfree.commands.common import run_metadata, write_json
from fastfree.commands.run_learner import last_learner, read_run_config, run_input_space
from fastfree.config import get_preset
from fastfree.errors import FastFreeError
from fastfree.free.learner_file import LearnerCard, learner_from_state, write_learner_file
from fastfree.free.selection import BEST, Selected, for_shots, read_selected

CPU = "cpu"


def selected_pick(selected: dict[int | None, Selected], shots: int | None) -> tuple[Selected, tuple[int, ...] | None]:
    """The pick to export and the shot counts it was selected for (None: a legacy single pick)."""
    if None in selected:
        return selected[None], None
    if shots is not None:
        pick = for_shots(selected, shots)
    else:
        iterations = {s.iteration for s in selected.values()}
        if len(iterations) > 1:
            picks = ", ".join(f"{k}-shot at iteration {v.iteration}" for k, v in sorted(selected.items()))
            raise FastFreeError(f"meta-val selected a different learner per shot count ({picks}): export one at a time "
                                f"with --shots {' or --shots '.join(str(k) for k in sorted(selected))}")
        pick = next(iter(selected.values()))
    return pick, tuple(sorted(k for k, v in selected.items() if v.iteration == pick.iteration))


def run(args) -> dict:
    if args.shots is not None and args.learner == "last":
        raise FastFreeError("--shots picks among the learners selected on meta-val; the last learner is one for "
                            "every shot count: drop --shots, or use --learner selected")
    run_dir = Path(args.run)
    config = read_run_config(run_dir)
    protocol = get_preset(config["preset"]).metatest
    if args.learner == "last":
        state, iteration = last_learner(run_dir, CPU)
        shots, meta_val = None, None
    else:
        selected = read_selected(run_dir / BEST, CPU)
        if not selected:
            raise FastFreeError(f"{run_dir} has no {BEST} yet (it is written at the first meta-val evaluation after "
                                "warm-up): export its last learner with --learner last, or train further")
        pick, shots = selected_pick(selected, args.shots)
        state, iteration = pick.learner, pick.iteration
        meta_val = ({"mean over shot counts": pick.val} if shots is None
                    else {str(s): selected[s].val for s in shots})
    image_size, normalization = run_input_space(run_dir, config, CPU)
    card = LearnerCard(
        architecture="conv4", width=int(config["free"]["learner_width"]),
        ways=int(state["classifier.weight"].shape[0]), image_size=image_size, mean=normalization.mean,
        std=normalization.std, steps=protocol.steps, lr=protocol.lr, queries=protocol.queries, which=args.learner,
        shots=shots, iteration=iteration, meta_val=meta_val, preset=config["preset"], source=str(run_dir),
        fastfree_version=__version__)
    learner_from_state(state, card)  # the file must load back: refuse a state that does not fit its card now
    path = write_learner_file(args.out, state, card)
    print(f"wrote {path}: {card.label()} of {run_dir}, a {card.ways}-way Conv4-{card.width} at {card.image_size} px; "
          f"adapt it with `fastfree adapt --learner-file {path} --support DIR --query DIR`")
    payload = {"command": "export", "run": str(run_dir), "file": str(path), "card": asdict(card),
               "label": card.label(), **run_metadata(torch.device(CPU))}
    write_json(args.json, payload)
    return payload


__all__ = ["run", "selected_pick"]
