"""The fast engine: Algorithm 3's phases batched (vmap), compiled, CUDA-graphed and in bf16.

Plugs into fastfree.free.trainer.free_iteration in place of ReferenceEngine. It draws the
same random numbers in the same order (teacher ids, then each teacher's latent codes, then
each teacher's k+1 augmentations), so a run with the same seed is the same run on either
engine (equal in float64; tested).
"""

from __future__ import annotations

import torch
from torch import nn

from fastfree.data.split import Normalization
from fastfree.engine.augment import draw_table
from fastfree.engine.bell import bell_fast
from fastfree.engine.five import FastFive
from fastfree.engine.options import EngineOptions
from fastfree.engine.replay import maml_meta_batch_fast
from fastfree.engine.teachers import StackedTeachers
from fastfree.free.bell import gradient_alignment
from fastfree.free.config import FreeConfig
from fastfree.free.five import RecoveredTask, five_reference, task_labels
from fastfree.free.replay import maml_meta_batch_reference
from fastfree.free.trainer import FreeState


class FastEngine:
    name = "fast"

    def __init__(self, teachers: list[nn.Module], options: EngineOptions, device: torch.device):
        self.teachers = teachers  # kept for the sequential-generator ablation, which cannot batch
        self.stack = StackedTeachers(teachers)
        self.options, self.device = options, device
        self._five: FastFive | None = None
        # Replay: vmapped over the meta-batch where vectorising pays (GPU); on a CPU the per-task
        # loop is faster (measured: vmapped 1.3-1.4x slower, chunked worse; profiling/bench_replay.py).
        self.meta_batch_fn = maml_meta_batch_fast if options.vectorize else maml_meta_batch_reference

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, device=self.device)

    def recover(self, state: FreeState, ids: list[int], normalization: Normalization, cfg: FreeConfig,
                adversarial: bool) -> tuple[list[RecoveredTask], dict[str, torch.Tensor]]:
        if cfg.generator == "sequential":  # each teacher starts from the previous one's generator
            return five_reference(state.generator, [self.teachers[i] for i in ids], ids, state.learner,
                                  normalization, cfg.five, adversarial=adversarial, rng=state.rngs["augment"],
                                  latent_rng=state.rngs["latent"], sequential=True)
        if self._five is None:
            self._five = FastFive(state.generator, self.stack, state.learner, normalization, cfg.five, self.options,
                                  self.device)
        five, gen = cfg.five, state.generator
        dtype = next(gen.parameters()).dtype
        n = self.stack.ways * five.images_per_class
        # host draws in the reference's order; one copy each to the device
        z = torch.stack([torch.randn(n, gen.latent_dim, generator=state.rngs["latent"], dtype=dtype) for _ in ids])
        if five.augment:
            draws = draw_table(len(ids), five.k + 1, five.pad, state.rngs["augment"])
        else:
            draws = torch.zeros(len(ids), five.k + 1, 3, dtype=torch.long)
        labels = task_labels(self.stack.ways, five.images_per_class, self.device)
        out = self._five(dict(gen.named_parameters()), _to(z, self.device), self._ids(ids), _to(draws, self.device),
                         dict(state.learner.named_parameters()), labels, adversarial)
        eta_rate, loss = out.eta.mean(1).tolist(), out.loss.tolist()  # one read per iteration (metrics)
        tasks = [RecoveredTask(out.images[i], labels, tid, eta_rate[i], loss[i]) for i, tid in enumerate(ids)]
        return tasks, out.meta_grad

    def learn(self, state: FreeState, tasks: list[RecoveredTask], ids: list[int], normalization: Normalization,
              cfg: FreeConfig) -> list[float]:
        images = torch.stack([t.images for t in tasks])
        losses = bell_fast(state.learner, images, tasks[0].labels, self.stack.gather(self._ids(ids)), self.stack,
                           normalization, cfg.bell, self.options, state.learner_opt)
        return losses.tolist()

    def alignment(self, state: FreeState, tasks: list[RecoveredTask], ids: list[int], normalization: Normalization,
                  cfg: FreeConfig) -> dict:
        tensors = self.stack.gather(self._ids(ids))
        teachers = [_Bound(self.stack, {k: v[i] for k, v in tensors.items()}) for i in range(len(ids))]
        return gradient_alignment(state.learner, tasks, teachers, normalization, cfg.bell.targets)


class _Bound:
    """One stacked teacher as a callable x -> logits."""

    def __init__(self, stack: StackedTeachers, tensors: dict[str, torch.Tensor]):
        self.stack, self.tensors = stack, tensors

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack.forward(self.tensors, x)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without blocking the host (pinned staging on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
