"""Algorithm 3 (FREE): the outer loop, its state, and exact checkpoint/resume.

One iteration:
  1. sample b teachers uniformly (with replacement) from the pool;
  2. FIVE recovers one task per teacher (timed: the data-recovery cost of the paper);
  3. the recovered tasks go into the memory bank, labelled with the teachers' global classes;
  4. the meta-generator takes one step on the first-order meta-gradient;
  5. BELL updates the meta-learner on the recovered tasks (or ERM, or nothing: ablations);
  6. cross-task replay runs MAML on tasks drawn from the bank.
During the warm-up iterations only steps 1, 2 and 4 run, and FIVE uses the CE term alone.

All randomness comes from four torch.Generators held in the state (teacher sampling,
latent codes, augmentation, replay tasks) and the state is checkpointed whole, so a run
killed and resumed from its checkpoint ends with the same parameters as one that never
stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from fastfree.data.split import Normalization
from fastfree.free.bell import bell_reference, gradient_alignment
from fastfree.free.config import FreeConfig
from fastfree.free.five import RecoveredTask, apply_meta_gradient, five_reference
from fastfree.free.memory import MemoryBank
from fastfree.free.replay import replay
from fastfree.metatest.adapt import functional_template
from fastfree.models import Conv4, Generator

RNG_NAMES = ("teachers", "latent", "augment", "replay")


@dataclass
class FreeState:
    iteration: int  # iterations completed
    generator: Generator
    generator_opt: torch.optim.Optimizer
    learner: nn.Module
    learner_opt: torch.optim.Optimizer
    bank: MemoryBank
    rngs: dict[str, torch.Generator]
    recovery_seconds: float = 0.0  # FIVE time after warm-up, synchronised
    best: dict = field(default_factory=lambda: {"iteration": -1, "val": -1.0})

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "generator": self.generator.state_dict(),
            "generator_opt": self.generator_opt.state_dict(),
            "learner": self.learner.state_dict(),
            "learner_opt": self.learner_opt.state_dict(),
            "bank": self.bank.state_dict(),
            "rngs": {k: g.get_state() for k, g in self.rngs.items()},
            "recovery_seconds": self.recovery_seconds,
            "best": dict(self.best),
        }

    def load_state_dict(self, d: dict) -> None:
        self.iteration = int(d["iteration"])
        self.generator.load_state_dict(d["generator"])
        self.generator_opt.load_state_dict(d["generator_opt"])
        self.learner.load_state_dict(d["learner"])
        self.learner_opt.load_state_dict(d["learner_opt"])
        self.bank.load_state_dict(d["bank"])
        for k, g in self.rngs.items():
            g.set_state(d["rngs"][k])
        self.recovery_seconds = float(d["recovery_seconds"])
        self.best = dict(d["best"])


def init_state(cfg: FreeConfig, image_size: int, ways: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> FreeState:
    """A fresh run: generator and meta-learner initialised from cfg.seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        generator = Generator(cfg.latent_dim, cfg.ngf, image_size).to(device=device, dtype=dtype)
        learner = functional_template(Conv4(ways, cfg.learner_width, image_size)).to(device=device, dtype=dtype)
    rngs = {name: torch.Generator().manual_seed(cfg.seed * 1000 + i) for i, name in enumerate(RNG_NAMES)}
    return FreeState(
        iteration=0,
        generator=generator,
        generator_opt=torch.optim.Adam(generator.parameters(), lr=cfg.generator_lr, betas=cfg.generator_betas),
        learner=learner,
        learner_opt=torch.optim.Adam(learner.parameters(), lr=cfg.learner_lr),
        bank=MemoryBank(cfg.memory_per_class, (3, image_size, image_size), device=device, dtype=dtype),
        rngs=rngs,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_iteration(
    state: FreeState, teachers: list[nn.Module], teacher_classes: list[tuple[int, ...]],
    normalization: Normalization, cfg: FreeConfig,
) -> tuple[dict, list[RecoveredTask]]:
    """Run iteration `state.iteration` (0-based) of Algorithm 3 and advance the state."""
    device = next(state.generator.parameters()).device
    warm = state.iteration < cfg.warmup
    t_start = time.perf_counter()
    ids = torch.randint(0, len(teachers), (cfg.teachers_per_iteration,), generator=state.rngs["teachers"]).tolist()
    batch = [teachers[i] for i in ids]

    _sync(device)
    t0 = time.perf_counter()
    sequential = cfg.generator == "sequential"
    tasks, meta_grad = five_reference(state.generator, batch, ids, state.learner, normalization, cfg.five,
                                      adversarial=not warm, rng=state.rngs["augment"], latent_rng=state.rngs["latent"],
                                      sequential=sequential)
    _sync(device)
    recovery = time.perf_counter() - t0
    if not sequential:
        apply_meta_gradient(state.generator, meta_grad, state.generator_opt)

    metrics = {
        "iteration": state.iteration,
        "warmup": warm,
        "teachers": ids,
        "five_loss": sum(t.final_loss for t in tasks) / len(tasks),
        "eta_rate": sum(t.eta_rate for t in tasks) / len(tasks),
        "recovery_s": recovery,
    }
    if not warm:
        state.recovery_seconds += recovery
        for task in tasks:
            classes = torch.tensor(teacher_classes[task.teacher], device=device)
            state.bank.add(task.images, classes[task.labels])
        metrics["alignment"] = gradient_alignment(state.learner, tasks, batch, normalization, cfg.bell.targets)
        if cfg.bell.mode != "none":
            metrics["bell_losses"] = bell_reference(state.learner, tasks, batch, normalization, cfg.bell,
                                                    state.learner_opt)["losses"]
        if cfg.replay_enabled:
            stats = replay(state.learner, state.learner_opt, state.bank, normalization, cfg.replay, state.rngs["replay"])
            metrics["replay"] = {k: v for k, v in stats.items() if k != "accuracies"}
    metrics["bank_images"] = len(state.bank)
    metrics["iteration_s"] = time.perf_counter() - t_start
    state.iteration += 1
    return metrics, tasks
