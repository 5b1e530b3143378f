"""What `eval --learner every` has measured so far, kept in the run directory so an interrupt loses
at most the learner being tested (on CIFAR-FS, ~48 learners x 600 tasks x 2 shot counts: hours on a CPU).

    RUN/metatests/every-learner-KEY.jsonl
        {"protocol": {...}}                                               the first line: what KEY stands for
        {"iteration", "learner_sha256", "results": {shots: {"mean", "ci95", "accuracies"}}}   one per learner

KEY digests everything that decides a learner's accuracies (every_learner.results_key): the tasks
(task_protocol: count, ways, shots, queries, adaptation, seed), the split, the data as decoded here
(its digest), and what changes the rounding (dtype, engine, chunk, device, threads, torch
version): a result is reused only where it would come out the same, and only for
the same learner (its weights' digest): a learner kept again after a restart is tested again. Lines are
appended and flushed one by one; a line torn by a kill is ignored. Where the run directory cannot
be written (read-only), the command says so and goes on without keeping its progress.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from fastfree.metatest.protocol import ShotResult

FOLDER = "metatests"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes (pure)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def progress_path(run_dir: Path, protocol: dict) -> Path:
    key = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]
    return Path(run_dir) / FOLDER / f"every-learner-{key}.jsonl"


def _to_json(results: list[ShotResult]) -> dict:
    return {str(r.shots): {"mean": r.mean, "ci95": r.ci95, "accuracies": list(r.accuracies)} for r in results}


def _from_json(results: dict) -> list[ShotResult]:
    return [ShotResult(int(s), v["mean"], v["ci95"], len(v["accuracies"]), list(v["accuracies"]))
            for s, v in results.items()]


class EveryLearnerProgress:
    """The learners already tested under one protocol, and a way to add one."""

    def __init__(self, run_dir: Path, protocol: dict) -> None:
        self.path = progress_path(run_dir, protocol)
        self.protocol = protocol
        self.done: dict[tuple[int, str], list[ShotResult]] = {}
        self.unwritable: str | None = None  # why progress is not kept, once writing failed
        try:
            lines = self.path.read_text().splitlines()[1:] if self.path.is_file() else []
        except (OSError, UnicodeDecodeError) as e:  # unreadable: every learner is tested again
            print(f"note: cannot read eval's earlier progress ({e}): testing every learner", flush=True)
            lines = []
        for line in lines:
            try:
                d = json.loads(line)
                self.done[(int(d["iteration"]), d["learner_sha256"])] = _from_json(d["results"])
            except (ValueError, KeyError, TypeError):  # a line torn by a kill (or a second header): skipped
                continue

    def get(self, iteration: int, digest: str) -> list[ShotResult] | None:
        return self.done.get((iteration, digest))

    def add(self, iteration: int, digest: str, results: list[ShotResult]) -> None:
        self.done[(iteration, digest)] = results
        if self.unwritable is not None:
            return
        line = json.dumps({"iteration": iteration, "learner_sha256": digest, "results": _to_json(results)})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.is_file() or self.path.stat().st_size == 0
            with open(self.path, "a") as f:
                if fresh:
                    f.write(json.dumps({"protocol": self.protocol}) + "\n")
                elif not _ends_with_newline(self.path):  # after a torn line: start a new one
                    f.write("\n")
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self.unwritable = f"{e.strerror or e} ({self.path})"
            print(f"note: cannot keep eval's progress in the run directory: {self.unwritable}; an interrupt "
                  "loses the learners tested so far", flush=True)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


__all__ = ["EveryLearnerProgress", "FOLDER", "progress_path", "state_digest"]
