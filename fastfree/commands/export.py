"""`fastfree export --run RUN --out FILE.safetensors`: a run's meta-learner as one portable file.

The learner selected on meta-val (or the last one), its weights as safetensors and, in the file's
metadata, the card `fastfree adapt --learner-file`, `eval --learner-file` and `load_learner` need:
shape, input space, the run's adaptation (fastfree/free/learner_file.py), built by the function
that describes the learner `adapt --run` uses (`run_learner.run_learner_card`). One run selects a
learner per shot count; when 1 and 5 shots picked different learners, `--shots K` says which.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from fastfree.commands.common import run_metadata, write_json
from fastfree.commands.run_learner import read_run_config, run_learner_card, shots_of_pick
from fastfree.errors import FastFreeError
from fastfree.free.learner_file import learner_from_state, write_learner_file
from fastfree.free.selection import Selected

CPU = "cpu"


def choose_pick(selected: dict[int | None, Selected], shots: int | None) -> int | None:
    """The key of the pick to export: `shots`'s, or the one learner every shot count picked."""
    keys = sorted(k for k in selected if k is not None)
    if None in selected:
        if shots is not None:
            print(f"note: this run's meta-val kept one learner for every shot count (a run from before per-shot "
                  f"selection); --shots {shots} exports it", file=sys.stderr)
        return None
    options = " or ".join(f"--shots {k}" for k in keys)
    if shots is not None:
        if shots not in selected:
            raise FastFreeError(f"meta-val selected learners for {', '.join(f'{k}-shot' for k in keys)} tasks, not "
                                f"{shots}-shot: export with {options}")
        return shots
    if shots_of_pick(selected, keys[0]) != tuple(keys):
        picks = ", ".join(f"{k}-shot at iteration {selected[k].iteration}" for k in keys)
        raise FastFreeError(f"meta-val selected a different learner per shot count ({picks}): export one at a time "
                            f"with {options}")
    return keys[0]


def run(args) -> dict:
    if args.shots is not None and args.learner == "last":
        raise FastFreeError("--shots picks among the learners selected on meta-val; the last learner is one for "
                            "every shot count: drop --shots, or use --learner selected")
    run_dir = Path(args.run)
    config = read_run_config(run_dir)
    state, card = run_learner_card(run_dir, config, args.learner, partial(choose_pick, shots=args.shots), CPU)
    learner_from_state(state, card)  # the file must load back: refuse a state that does not fit its card now
    path = write_learner_file(args.out, state, card)
    print(f"wrote {path}: {card.label()} of {run_dir}, a {card.ways}-way Conv4-{card.width} at {card.image_size} px; "
          f"adapt it with `fastfree adapt --learner-file {shlex.quote(str(path))} --support DIR --query DIR`")
    payload = {"command": "export", "run": str(run_dir), "file": str(path), "card": asdict(card),
               "label": card.label(), **run_metadata(torch.device(CPU))}
    write_json(args.json, payload)
    return payload


__all__ = ["choose_pick", "run"]
