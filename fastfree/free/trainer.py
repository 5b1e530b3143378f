"""Algorithm 3 (FREE): the outer loop, its state, and exact checkpoint/resume.

One iteration:
  1. sample b teachers uniformly (with replacement) from the pool;
  2. FIVE recovers one task per teacher (timed: the data-recovery cost of the paper);
  3. the recovered tasks go into the memory bank, labelled with the teachers' global classes;
  4. the meta-generator takes one step on the first-order meta-gradient;
  5. BELL updates the meta-learner on the recovered tasks (or ERM, or nothing: ablations);
  6. cross-task replay runs MAML on tasks drawn from the bank.
During the warm-up iterations only steps 1, 2 and 4 run, and FIVE uses the CE term alone.
The phases run on an engine: ReferenceEngine here (sequential, the oracle) or
fastfree.engine.FastEngine (batched, compiled, graphed); the loop and its random draws are shared.

All randomness comes from four torch.Generators held in the state (teacher sampling,
latent codes, augmentation, replay tasks) and the state is checkpointed whole, so a run
killed and resumed from its checkpoint ends with the same parameters as one that never
stopped.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from fastfree.data.split import Normalization
from fastfree.free.augment import crop_flip, draw_crop_flip
from fastfree.free.bell import BellConfig, bell_reference, gradient_alignment
from fastfree.free.config import FreeConfig
from fastfree.free.five import RecoveredTask, apply_meta_gradient, five_reference
from fastfree.free.memory import MemoryBank
from fastfree.free.replay import maml_meta_batch_reference, replay
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
    recovery_seconds: float = 0.0  # FIVE time after warm-up, synchronised, without setup_seconds
    # FIVE time after warm-up in the iterations whose FIVE compiled or captured something first
    # (engine.five_setups grew): one-time costs, and that iteration's epoch with them
    setup_seconds: float = 0.0
    best: dict = field(default_factory=dict)  # per shot count: {"1": {"iteration", "val"}} (free/selection.py)

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
            "setup_seconds": self.setup_seconds,
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
            g.set_state(d["rngs"][k].cpu())  # a checkpoint read onto the GPU still restores
        self.recovery_seconds = float(d["recovery_seconds"])
        self.setup_seconds = float(d.get("setup_seconds", 0.0))  # absent from checkpoints before it existed
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


class PhaseTimer:
    """Seconds per phase of an iteration: CUDA events on a GPU (read once, at the end), wall time on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        """End of phase `name` (the first mark, named "start", opens the first phase)."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def read(self) -> dict[str, float]:
        if self.cuda:
            self.marks[-1][1].synchronize()
            span = [a.elapsed_time(b) / 1000 for (_, a), (_, b) in zip(self.marks, self.marks[1:])]
        else:
            span = [b - a for (_, a), (_, b) in zip(self.marks, self.marks[1:])]
        out: dict[str, float] = {}
        for (name, _), seconds in zip(self.marks[1:], span):
            out[name] = out.get(name, 0.0) + seconds
        return out


class ReferenceEngine:
    """The paper-faithful sequential engine (the oracle): each phase as fastfree.free writes it."""

    name = "reference"
    meta_batch_fn = staticmethod(maml_meta_batch_reference)
    five_setups = 0  # nothing compiled or captured

    def __init__(self, teachers: list[nn.Module]):
        self.teachers = teachers

    def recover(self, state: FreeState, ids: list[int], normalization: Normalization, cfg: FreeConfig,
                adversarial: bool) -> tuple[list[RecoveredTask], dict[str, torch.Tensor]]:
        return five_reference(state.generator, [self.teachers[i] for i in ids], ids, state.learner, normalization,
                              cfg.five, adversarial=adversarial, rng=state.rngs["augment"],
                              latent_rng=state.rngs["latent"], sequential=cfg.generator == "sequential")

    def learn(self, state: FreeState, tasks: list[RecoveredTask], ids: list[int], normalization: Normalization,
              cfg: FreeConfig) -> list[float]:
        return bell_reference(state.learner, tasks, [self.teachers[i] for i in ids], normalization, cfg.bell,
                              state.learner_opt)["losses"]

    def alignment(self, state: FreeState, tasks: list[RecoveredTask], ids: list[int], normalization: Normalization,
                  cfg: FreeConfig) -> dict:
        return gradient_alignment(state.learner, tasks, [self.teachers[i] for i in ids], normalization,
                                  cfg.bell.targets)


def bell_inputs(tasks: list[RecoveredTask], cfg: BellConfig, rng: torch.Generator) -> list[RecoveredTask]:
    """The tasks BELL distils on: as recovered, or (cfg.augment) one crop-and-flip draw applied to all b,
    as the published code augments its stacked tasks. The bank keeps the images as recovered."""
    if not cfg.augment:
        return tasks
    top, left, flip = draw_crop_flip(4, rng)  # FIVE's augmentation stream: a run without augment draws as before
    return [dataclasses.replace(t, images=crop_flip(t.images, top, left, flip)) for t in tasks]


def free_iteration(
    state: FreeState, teachers: list[nn.Module], teacher_classes: list[tuple[int, ...]],
    normalization: Normalization, cfg: FreeConfig, engine=None, timer: PhaseTimer | None = None,
) -> tuple[dict, list[RecoveredTask]]:
    """Run iteration `state.iteration` (0-based) of Algorithm 3 and advance the state.

    `engine` runs the phases (default: ReferenceEngine(teachers)); every engine draws the same
    random numbers in the same order, so the same seed gives the same run on each.
    `timer` marks the phases (default: a PhaseTimer on the device; the profiler passes one that
    also counts FLOPs per phase).
    """
    engine = engine or ReferenceEngine(teachers)
    device = next(state.generator.parameters()).device
    warm = state.iteration < cfg.warmup
    t_start = time.perf_counter()
    timer = timer or PhaseTimer(device)
    timer.mark("start")
    ids = torch.randint(0, len(teachers), (cfg.teachers_per_iteration,), generator=state.rngs["teachers"]).tolist()
    setups = engine.five_setups
    tasks, meta_grad = engine.recover(state, ids, normalization, cfg, adversarial=not warm)
    timer.mark("five")
    first_use = engine.five_setups > setups  # this FIVE compiled or captured a variant first
    if cfg.generator != "sequential":
        if cfg.generator_optimizer == "fresh":  # the published code's: a new Adam for every iteration's step
            state.generator_opt = torch.optim.Adam(state.generator.parameters(), lr=cfg.generator_lr,
                                                   betas=cfg.generator_betas)
        apply_meta_gradient(state.generator, meta_grad, state.generator_opt)
    timer.mark("generator")

    metrics = {"iteration": state.iteration, "warmup": warm, "teachers": ids}
    if not warm:
        for task in tasks:
            classes = torch.tensor(teacher_classes[task.teacher], device=device)
            state.bank.add(task.images, classes[task.labels])
        timer.mark("bank")
        metrics["alignment"] = engine.alignment(state, tasks, ids, normalization, cfg)
        timer.mark("alignment")
        if cfg.bell.mode != "none":
            metrics["bell_losses"] = engine.learn(state, bell_inputs(tasks, cfg.bell, state.rngs["augment"]), ids,
                                                  normalization, cfg)
        timer.mark("bell")
        if cfg.replay_enabled:
            stats = replay(state.learner, state.learner_opt, state.bank, normalization, cfg.replay,
                           state.rngs["replay"], meta_batch_fn=engine.meta_batch_fn)
            metrics["replay"] = {k: v for k, v in stats.items() if k != "accuracies"}
        timer.mark("replay")
    # the timer's read waits for the device once; the iteration also reads small values back between its
    # phases (FIVE's and BELL's losses and eta, the bank's class bookkeeping, the alignment's three numbers,
    # replay's patience checks): about 30 waits on CUDA, none inside FIVE's k steps or a replay meta-batch
    phases = timer.read()
    metrics["five_loss"] = sum(t.final_loss for t in tasks) / len(tasks)
    metrics["eta_rate"] = sum(t.eta_rate for t in tasks) / len(tasks)
    metrics["recovery_s"] = phases["five"]
    metrics["five_setup"] = first_use
    metrics["phase_s"] = phases
    if not warm:  # a compiling or capturing FIVE is a one-time cost, kept apart from data recovery
        if first_use:
            state.setup_seconds += phases["five"]
        else:
            state.recovery_seconds += phases["five"]
    metrics["bank_images"] = len(state.bank)
    metrics["iteration_s"] = time.perf_counter() - t_start
    state.iteration += 1
    return metrics, tasks
