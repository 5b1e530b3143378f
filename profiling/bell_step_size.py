"""How far one BELL update moves the meta-learner: the paper's interpolation vs the published code's Adam.

Not a test: it reports. Algorithm 2 ends with theta <- theta + eps (theta_tilde - theta), eps = 1e-3,
where theta_tilde took b Adam(alpha = 1e-3) steps of distillation from theta: each weight moves by
at most about eps * b * alpha (4e-6 at b = 4), whatever the losses. The published code instead
feeds 67 (theta - theta_tilde) as a gradient to the meta-learner's persistent Adam (lr 1e-3),
the optimiser replay steps at least patience + 1 = 11 times per iteration. This prints the mean
and largest |delta theta| per weight of one BELL call under each rule on the same tasks: b random
Conv4 teachers and b tasks of random images (the bound does not depend on them), from a fresh
learner, or from a run's checkpoint: its learner and, for the Adam rule, its optimiser's state
after all the replay steps so far; there it also takes one replay meta-batch (10 second-order
MAML tasks from the checkpoint's memory bank, one step of that optimiser) for comparison.

    python -m fastfree.profiling.bell_step_size [--checkpoint RUN/checkpoint.pt] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy

import torch

from fastfree.commands.common import run_metadata, write_json
from fastfree.data.split import CIFAR100_NORM
from fastfree.free.bell import BellConfig, bell_reference
from fastfree.free.five import RecoveredTask
from fastfree.free.memory import MemoryBank
from fastfree.free.replay import ReplayConfig, replay
from fastfree.metatest.adapt import functional_template
from fastfree.models.conv4 import Conv4


def _delta(before: list[torch.Tensor], model: torch.nn.Module) -> dict[str, float]:
    d = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(model.parameters(), before)])
    return {"mean": d.mean().item(), "max": d.max().item()}


def step_sizes(learner: torch.nn.Module, opt_state: dict | None, bank: MemoryBank | None = None, b: int = 4,
               seed: int = 0) -> dict:
    """|delta theta| of one BELL call per outer rule and, given a bank, of one replay meta-batch (pure: copies)."""
    ways = learner.classifier.weight.shape[0]
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        teachers = [Conv4(ways, 32, 32).eval().requires_grad_(False) for _ in range(b)]
        tasks = [RecoveredTask(torch.rand(ways * 20, 3, 32, 32), torch.arange(ways).repeat_interleave(20), i, 0.0,
                               0.0) for i in range(b)]

    def fresh():
        model = copy.deepcopy(learner)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        return model, opt, [p.detach().clone() for p in model.parameters()]

    out = {}
    for rule in ("interpolate", "adam"):
        model, opt, before = fresh()
        bell_reference(model, tasks, teachers, CIFAR100_NORM, BellConfig(outer=rule), opt)
        out[f"bell_{rule}"] = _delta(before, model)
    if bank is not None:
        model, opt, before = fresh()
        one = ReplayConfig(patience=1, max_meta_batches=1)  # exactly one meta-batch, one optimiser step
        stats = replay(model, opt, bank, CIFAR100_NORM, one, torch.Generator().manual_seed(seed))
        assert stats["meta_batches"] == 1, stats
        out["replay_one_meta_batch"] = _delta(before, model)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a `fastfree train` run's checkpoint.pt: start from its learner and optimiser")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    learner, opt_state, iteration, bank = functional_template(Conv4(5, 32, 32)), None, None, None
    if args.checkpoint:
        saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        learner.load_state_dict(saved["learner"])
        opt_state, iteration = saved["learner_opt"], int(saved["iteration"])
        bank = MemoryBank(int(saved["bank"]["capacity_per_class"]), tuple(saved["bank"]["image_shape"]))
        bank.load_state_dict(saved["bank"])
    sizes = step_sizes(learner, opt_state, bank)
    result = {"what": "|delta theta| per weight of one BELL call (b=4, alpha=1e-3) per outer rule, and (from a "
                      "checkpoint) of one replay meta-batch", "checkpoint": args.checkpoint, "iteration": iteration,
              **sizes, **run_metadata(torch.device("cpu"))}
    for k, v in sizes.items():
        print(f"{k:>20}: mean {v['mean']:.3g}, max {v['max']:.3g}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
