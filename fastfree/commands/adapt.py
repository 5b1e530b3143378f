"""`fastfree adapt --run RUN --support DIR --query DIR`: a run's meta-learner on a task of one's own
(or `--learner-file FILE`: one `fastfree export` wrote, which carries what the run directory would).

What meta-learning is for: a few labelled images per class (`--support`, one folder per class)
and the meta-learner adapts to them as the meta-test adapts (the run's protocol: its SGD steps
and learning rate, BatchNorm on batch statistics), then classifies `--query`'s images. A query
folder split by class is scored too, and `--compare-random` adapts a Random learner of the same
shape on the same task, the baseline every table here reports beside FREE.

The images are decoded as the image-folder data set is (Pillow, RGB, bilinear to the learner's
size) and normalised as the run's data was (input_space.json, written by `train`; a run from
before it reads its data once). A task of fewer classes than the learner's N uses the first
outputs of its classifier (`fastfree.metatest.own_task.head_for_ways`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch

from fastfree.commands.common import machine, run_metadata, write_json
from fastfree.commands.run_learner import read_run_config, run_learner_card
from fastfree.data.task_folder import TaskFiles, decode_task, read_task
from fastfree.errors import FastFreeError
from fastfree.free.atomic import atomic_write_text
from fastfree.free.learner_file import LearnerCard, learner_from_state, learner_module, read_learner_file
from fastfree.free.run import learner_init
from fastfree.metatest.initializations import random_init
from fastfree.metatest.own_task import adapted_probabilities, head_for_ways, nearest_shots
from fastfree.metatest.protocol import MetaTestConfig
from fastfree.models import build_model

PREVIEW = 20  # predictions printed when there is no --out


def _from_file(path: str, device: torch.device) -> tuple[dict, LearnerCard]:
    state, card = read_learner_file(path)
    learner_from_state(state, card)  # refuses a file whose tensors do not fit its card, before any image is read
    return {k: v.to(device) for k, v in state.items()}, card


def _shot_note(card: LearnerCard, shots: float) -> str | None:
    """A note when a learner file's pick was selected for other shot counts than the task's (`adapt --run`
    would take the run's pick for the nearest shot count, which may be another learner)."""
    if card.shots is None or round(shots) in card.shots:
        return None
    return (f"note: this learner was selected on meta-val for {'- and '.join(map(str, card.shots))}-shot tasks and "
            f"the support has {shots:g} image(s) per class; its run may have selected another learner for that "
            "(export it with --shots)")


def _shared_files(task: TaskFiles) -> list[Path]:
    """Query files whose bytes are a support file's (the same file, or a copy)."""
    support = {hashlib.sha256(p.read_bytes()).digest() for p in task.support}
    return [p for p in task.query if hashlib.sha256(p.read_bytes()).digest() in support]


def _accuracy(predicted: list[int], labels: tuple[int, ...] | None, classes: tuple[str, ...]) -> dict | None:
    if labels is None:
        return None
    hits = [p == y for p, y in zip(predicted, labels)]
    per_class = {}
    for c, name in enumerate(classes):
        mine = [h for h, y in zip(hits, labels) if y == c]
        if mine:
            per_class[name] = 100.0 * sum(mine) / len(mine)
    return {"accuracy": 100.0 * sum(hits) / len(hits), "per_class": per_class}


def _write_csv(path: Path, task: TaskFiles, probs: torch.Tensor, predicted: list[int]) -> None:
    """One row per query image: file, predicted class, each class's probability (and the label)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = io.StringIO(newline="")
    w = csv.writer(rows)
    w.writerow(["file", "predicted", *(f"p({c})" for c in task.classes),
                *(["label"] if task.query_labels is not None else [])])
    for i, (file, p, c) in enumerate(zip(task.query, probs.tolist(), predicted)):
        row = [str(file), task.classes[c], *(f"{v:.6f}" for v in p)]
        if task.query_labels is not None:
            row.append(task.classes[task.query_labels[i]])
        w.writerow(row)
    atomic_write_text(path, rows.getvalue())


def run(args) -> dict:
    device, dtype = machine(args)
    if args.learner_file and args.learner:
        raise FastFreeError("--learner chooses among a run directory's learners; a learner file holds one: drop "
                            f"--learner, or export that one (`fastfree export --run RUN_DIR --learner {args.learner} "
                            "--out FILE.safetensors`)")
    # what can be refused without reading an image is checked first: the flags, then the learner's source
    replace(MetaTestConfig(), **{k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None})
    run_dir = Path(args.run) if args.run else None
    if run_dir is not None:
        config = read_run_config(run_dir)
    else:
        state, card = _from_file(args.learner_file, device)
    task = read_task(args.support, args.query)
    shared = _shared_files(task)
    if shared:  # allowed (it may be meant), but an accuracy measured on the support images says little
        print(f"warning: {len(shared)} query image(s) are also support images (the same bytes; e.g. {shared[0]}): "
              "predictions on them do not measure how the learner generalises", file=sys.stderr)
    ways = len(task.classes)
    t0 = time.perf_counter()
    shots = sum(task.shots) / ways
    if run_dir is not None:  # the last learner, or the pick for the nearest shot count
        state, card = run_learner_card(run_dir, config, args.learner or "selected",
                                       lambda selected: nearest_shots(selected, shots), device)
    elif note := _shot_note(card, shots):
        print(note, file=sys.stderr)
    # the run's adaptation, or --steps / --lr
    protocol = replace(MetaTestConfig(), steps=card.steps if args.steps is None else args.steps,
                       lr=card.lr if args.lr is None else args.lr, queries=card.queries)
    label, iteration, width = card.label(), card.iteration, card.width
    image_size, normalization = card.image_size, card.normalization
    head = int(state["classifier.weight"].shape[0])
    learner = learner_module(head_for_ways(state, ways), width, image_size, device, dtype)

    support_u8, query_u8 = decode_task(task, image_size)
    support = normalization(support_u8.to(device), dtype)
    query = normalization(query_u8.to(device), dtype)
    support_labels = torch.tensor(task.support_labels, device=device)
    adapt = partial(adapted_probabilities, support=support, support_labels=support_labels, query=query,
                    steps=protocol.steps, lr=protocol.lr, bn_stats=args.bn_stats, chunk=args.chunk)
    probs = adapt(learner_init(learner)).cpu()
    predicted = probs.argmax(-1).tolist()
    scores = _accuracy(predicted, task.query_labels, task.classes)
    random = None
    if args.compare_random:
        builder = partial(build_model, "conv4", ways, width, image_size)
        random_probs = adapt(random_init(builder, args.seed)).cpu()
        random = {"seed": args.seed, "probabilities": random_probs.tolist(),
                  **(_accuracy(random_probs.argmax(-1).tolist(), task.query_labels, task.classes) or {})}
    seconds = time.perf_counter() - t0

    payload = {
        "command": "adapt", "run": None if run_dir is None else str(run_dir), "learner_file": args.learner_file,
        "learner": label, "card": asdict(card), "learner_iteration": iteration,
        "classes": list(task.classes), "ways": ways, "learner_ways": head, "shots_per_class": list(task.shots),
        "support": [str(p) for p in task.support], "steps": protocol.steps, "lr": protocol.lr,
        "bn_stats": args.bn_stats, "chunk": args.chunk, "shared_with_support": [str(p) for p in shared],
        "image_size": image_size, "normalization": normalization.to_dict(),
        "dtype": args.dtype,
        "predictions": [{"file": str(f), "predicted": task.classes[c], "probabilities": p,
                         **({"label": task.classes[task.query_labels[i]]} if task.query_labels else {})}
                        for i, (f, c, p) in enumerate(zip(task.query, predicted, probs.tolist()))],
        "accuracy": None if scores is None else scores["accuracy"],
        "per_class_accuracy": None if scores is None else scores["per_class"],
        "random": random, "csv": args.out, "seconds": seconds, **run_metadata(device),
    }
    # the files first: a closed stdout (`fastfree adapt ... | head`) must not lose them
    if args.out:
        _write_csv(Path(args.out), task, probs, predicted)
    write_json(args.json, payload)
    _print(task, label, args.run or args.learner_file, protocol.steps, protocol.lr, head, scores, random, predicted,
           probs, args.out, args.bn_stats, protocol.queries)
    return payload


def _print(task: TaskFiles, label: str, origin: str, steps: int, lr: float, head: int, scores: dict | None,
           random: dict | None, predicted: list[int], probs: torch.Tensor, out: str | None, bn_stats: str,
           queries: int) -> None:
    ways = len(task.classes)
    shots = sorted(set(task.shots))
    per_class = f"{shots[0]}" if len(shots) == 1 else f"{min(shots)}-{max(shots)}"
    print(f"{label} of {origin}, adapted to {ways} classes x {per_class} support image(s) each with {steps} SGD "
          f"steps (lr {lr})" + (f", its classifier's first {ways} of {head} outputs" if ways < head else ""))
    line = f"query: {len(task.query)} image(s)"
    if scores is not None:
        line += f", accuracy {scores['accuracy']:.2f} %"
        if random is not None:
            line += f" (Random, adapted the same way: {random['accuracy']:.2f} %)"
    print(line)
    if bn_stats == "query" and len(task.query) < ways * queries:
        print(f"note: BatchNorm normalised with these {len(task.query)} query images' own statistics (the meta-test "
              f"protocol, measured on {ways * queries} at a time; one image alone scores far lower: README, Your own "
              "task); --bn-stats support predicts each image on its own")
    if out:
        print(f"predictions: {out}")
        return
    shown = range(min(PREVIEW, len(task.query)))
    for i in shown:
        file = task.query[i]
        name = file.name if task.query_labels is None else f"{file.parent.name}/{file.name}"  # its label's folder
        print(f"  {name}: {task.classes[predicted[i]]} ({100 * float(probs[i].max()):.1f} %)")
    if len(task.query) > len(shown):
        print(f"  ... {len(task.query) - len(shown)} more: --out FILE.csv writes them all")


__all__ = ["run"]
