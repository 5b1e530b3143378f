"""The typed configuration of a FREE run (Algorithm 3 and its parts)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from fastfree.errors import FastFreeError
from fastfree.free.bell import BellConfig
from fastfree.free.five import FiveConfig
from fastfree.free.replay import ReplayConfig


# BELL's settings (flag, BellConfig field) and the learner updates (--learner-update) that use them:
# elsewhere they are refused (FreeConfig) and, in a run from before that, read as defaults (train --resume)
BELL_SETTINGS_USED_BY = (("--bell-outer", "outer", ("bell",)), ("--bell-inner", "inner_optimizer", ("bell",)),
                         ("--targets", "targets", ("bell", "erm")))


@dataclass(frozen=True)
class FreeConfig:
    iterations: int = 1000  # outer iterations ("epochs") of Algorithm 3
    warmup: int = 19  # first iterations: only the meta-generator trains (CE only, no bank, no learner)
    teachers_per_iteration: int = 4  # b, sampled uniformly with replacement from the pool
    seed: int = 42
    ngf: int = 64  # generator filters (Table 6)
    latent_dim: int = 256
    generator_lr: float = 1e-3  # gamma: the meta-generator's persistent Adam
    generator_betas: tuple[float, float] = (0.5, 0.999)
    # persistent: one Adam across iterations; fresh: a new Adam every iteration, as the published code
    # (each step then a sign step of size gamma; the paper writes a plain step of size gamma)
    generator_optimizer: str = "persistent"
    learner_lr: float = 1e-3  # the meta-learner's persistent Adam (replay outer loop, BELL's adam variant)
    learner_width: int = 32  # Conv4 meta-learner
    memory_per_class: int = 400
    generator: str = "meta"  # meta (FIVE) | sequential (Table 5's baseline: no meta-learning)
    replay_enabled: bool = True
    eval_every: int = 20  # meta-val evaluation for model selection
    val_tasks: int = 200
    checkpoint_every: int = 10
    grid_every: int = 50  # PNG grid of recovered tasks (Fig. 7)
    five: FiveConfig = field(default_factory=FiveConfig)
    bell: BellConfig = field(default_factory=BellConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.iterations < 1:
            problems.append(f"iterations={self.iterations} (need >= 1)")
        if not 0 <= self.warmup < self.iterations:
            # the preset's warm-up is easy to exceed with a short --iterations the user did set: name both flags
            problems.append(f"warmup={self.warmup} (need 0 <= warmup < iterations={self.iterations}: pass --warmup "
                            "below --iterations, or more --iterations)")
        if self.teachers_per_iteration < 1:
            problems.append(f"teachers_per_iteration={self.teachers_per_iteration} (need >= 1)")
        for name in ("ngf", "latent_dim", "learner_width", "memory_per_class", "eval_every", "val_tasks",
                     "checkpoint_every", "grid_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (need >= 1)")
        need = self.replay.shots + self.replay.queries
        if self.replay_enabled and need > self.memory_per_class:
            problems.append(f"replay tasks need shots + queries = {need} images per class but the bank keeps "
                            f"memory_per_class={self.memory_per_class} (lower --shots, or raise --memory-per-class)")
        if self.generator_optimizer not in ("persistent", "fresh"):
            problems.append(f"generator_optimizer={self.generator_optimizer!r} (use persistent or fresh)")
        elif self.generator_optimizer == "fresh" and self.generator == "sequential":
            problems.append("generator_optimizer='fresh' steps FIVE's meta-generator, which generator='sequential' "
                            "does not have (drop --generator-optimizer)")
        if self.bell.augment and self.bell.mode == "none":
            problems.append("bell.augment with no learner update: nothing distils (drop --bell-augment)")
        if self.bell.mode == "none" and not self.replay_enabled:
            problems.append("no learner update and no replay: the meta-learner would never change (drop "
                            "--learner-update none or --no-replay)")
        bell_default = BellConfig()
        unused = [flag for flag, field, used_by in BELL_SETTINGS_USED_BY
                  if self.bell.mode not in used_by and getattr(self.bell, field) != getattr(bell_default, field)]
        if unused:  # settings of an update that does not run, recorded as if they had acted
            problems.append(f"{', '.join(unused)} set BELL's update, which --learner-update {self.bell.mode} does not "
                            f"run (drop {', '.join(unused)})")
        if not self.replay_enabled and not self.replay.second_order:
            problems.append("first-order replay with replay off (drop --replay-first-order)")
        if self.generator not in ("meta", "sequential"):
            problems.append(f"generator={self.generator!r} (use meta or sequential)")
        if not (0 < self.generator_lr < math.inf and 0 < self.learner_lr < math.inf):
            problems.append(f"learning rates must be finite and > 0, got generator_lr={self.generator_lr}, "
                            f"learner_lr={self.learner_lr}")
        # replay's outer step is the meta-learner's one persistent Adam, built with learner_lr: a replay rate
        # set apart from its default would be ignored silently
        if self.replay.outer_lr not in (ReplayConfig.outer_lr, self.learner_lr):
            problems.append(f"replay.outer_lr={self.replay.outer_lr} differs from learner_lr={self.learner_lr}: replay's "
                            "outer step is the meta-learner's one Adam, whose rate is learner_lr; set learner_lr")
        if problems:
            raise FastFreeError("invalid FREE config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "FreeConfig":
        d = dict(d)
        d["five"] = FiveConfig(**{**d["five"], "betas": tuple(d["five"]["betas"])})
        d["bell"] = BellConfig(**d["bell"])
        d["replay"] = ReplayConfig(**d["replay"])
        d["generator_betas"] = tuple(d["generator_betas"])
        return FreeConfig(**d)
