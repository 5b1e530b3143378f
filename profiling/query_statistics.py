"""How a run's meta-learner predicts a task's query images under each BatchNorm mode of `fastfree adapt`.

After the meta-test's adaptation (the same SGD steps), BatchNorm normalises the query with:
  query               the query set's own batch statistics, all 5 x 15 images together (the meta-test protocol);
  query_one_at_a_time the same rule, each image alone (its own statistics): what predicting images one by
                      one gives under the protocol's rule;
  support             the support set's statistics (`--bn-stats support`), each image independent of the rest.
Tasks are the meta-test's own (seed 0), so `query` is the run's meta-test accuracy on them.

    python -m fastfree.profiling.query_statistics --run RUN [--tasks 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fastfree.commands.common import run_metadata, write_json
from fastfree.commands.run_learner import load_run_learner, run_learner_init
from fastfree.data.episodes import EpisodeSampler, EpisodeSpec
from fastfree.layout import cpu_layout
from fastfree.metatest.adapt import adapted_copy
from fastfree.metatest.own_task import on_batch_statistics
from fastfree.metatest.protocol import confidence_interval

MODES = ("query", "query_one_at_a_time", "support")


@torch.no_grad()
def _predictions(model: torch.nn.Module, support: torch.Tensor, query: torch.Tensor) -> dict[str, torch.Tensor]:
    frozen = on_batch_statistics(model, support)
    return {"query": model(query).argmax(-1),
            "query_one_at_a_time": torch.cat([model(query[i:i + 1]) for i in range(len(query))]).argmax(-1),
            "support": frozen(query).argmax(-1),
            "support_one_at_a_time": torch.cat([frozen(query[i:i + 1]) for i in range(len(query))]).argmax(-1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    target = load_run_learner(args.run, "selected", cpu)
    protocol = target.protocol()
    out = {"run": args.run, "tasks": args.tasks, "steps": protocol.steps, "lr": protocol.lr, "shots": {}}
    t0 = time.perf_counter()
    for shots in protocol.shots:
        init = run_learner_init(target, (shots,))[shots]
        sampler = EpisodeSampler(target.data.test, target.normalization, EpisodeSpec(protocol.ways, shots,
                                                                                      protocol.queries), seed=0)
        acc = {m: [] for m in MODES}
        disagree = 0
        for task in range(args.tasks):
            b = sampler.batch([task])
            params = {k: v[0] for k, v in init.for_tasks([0], cpu, torch.float32).items()}
            support, query = cpu_layout(b.support[0]), cpu_layout(b.query[0])  # as the meta-test (fastfree/layout.py)
            model = adapted_copy(init.template, params, support, b.support_labels[0], protocol.steps, protocol.lr)
            pred = _predictions(model, support, query)
            disagree += int((pred["support"] != pred.pop("support_one_at_a_time")).sum())
            for m in MODES:
                acc[m].append(100.0 * float((pred[m] == b.query_labels[0]).double().mean()))
        out["shots"][shots] = {m: dict(zip(("mean", "ci95"), confidence_interval(np.array(v)))) for m, v in acc.items()}
        out["shots"][shots]["support_alone_vs_together_disagreements"] = disagree
        print(shots, out["shots"][shots], flush=True)
    out["seconds"] = time.perf_counter() - t0
    out.update(run_metadata(cpu))
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
