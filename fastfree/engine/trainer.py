"""The fast engine: Algorithm 3's phases batched (vmap), compiled, CUDA-graphed and in bf16.

Plugs into fastfree.free.trainer.free_iteration in place of ReferenceEngine. It draws the
same random numbers in the same order (teacher ids, then each teacher's latent codes, then
each teacher's k+1 augmentations), so a run with the same seed is the same run on either
engine (equal in float64; tested).

A multi-architecture pool (Table 4) is grouped by architecture (fastfree.engine.groups): the
draws are made for all b sampled teachers in the sampled order, as above, and then handed
to each group's vmapped FIVE; tasks, eta and losses come back in the sampled order and the
meta-gradient is the reference's mean over all b teachers. BELL's teacher forward and the
alignment diagnostic are per group likewise; BELL's steps and replay do not see teachers.
A multi-domain pool (Table 3) needs nothing more: its teachers of other domains arrive wrapped in
fastfree.free.domains.TeacherAdapter (resize + renormalisation, traced and folded with the model),
and the groups split by (architecture, domain image size); tested equal to the reference in float64.
Table 5's sequential generator (each teacher's k steps start where the previous teacher's ended)
cannot batch its teachers: it runs them one at a time through the same FastFive (same draws).
"""

from __future__ import annotations


import torch
from torch import nn

from fastfree.data.split import Normalization
from fastfree.engine.augment import draw_table
from fastfree.engine.bell import bell_fast
from fastfree.engine.five import FastFive, FiveOutputs, merge_outputs
from fastfree.engine.groups import TeacherGroups, take
from fastfree.engine.options import EngineOptions
from fastfree.engine.replay import GraphedMetaBatch, maml_meta_batch_fast, maml_meta_batch_threaded
from fastfree.free.bell import gradient_alignment
from fastfree.free.config import FreeConfig
from fastfree.free.five import RecoveredTask, task_labels
from fastfree.free.trainer import FreeState


class FastEngine:
    name = "fast"

    def __init__(self, teachers: list[nn.Module], options: EngineOptions, device: torch.device):
        self.groups = TeacherGroups(teachers)
        self.options, self.device = options, device
        self._fives: dict[int, FastFive] = {}  # per architecture group, made on its first use
        # Replay: vmapped over the meta-batch where vectorising pays (GPU), and with --cuda-graphs the
        # whole meta-batch is one graph replay; on a CPU the per-task loop is faster (measured: vmapped
        # 1.3-1.4x slower, chunked worse; profiling/bench_replay.py), its tasks side by side in threads
        # when torch has more than one (the one-thread loop's numbers, whatever the thread count).
        if options.cuda_graphs and options.vectorize:
            self.meta_batch_fn = GraphedMetaBatch()
        else:
            self.meta_batch_fn = maml_meta_batch_fast if options.vectorize else maml_meta_batch_threaded

    @property
    def five_setups(self) -> int:
        """One-time FIVE work done so far (compilations, CUDA-graph captures): see FastFive.setups."""
        return sum(five.setups for five in self._fives.values())

    @property
    def five_graph_fallbacks(self) -> list[str]:
        """Why FIVE's CUDA-graph capture failed (those epochs run eagerly), for each variant where it did."""
        return [reason for five in self._fives.values() for reason in five.graph_fallbacks]

    def recover(self, state: FreeState, ids: list[int], normalization: Normalization, cfg: FreeConfig,
                adversarial: bool) -> tuple[list[RecoveredTask], dict[str, torch.Tensor]]:
        z, draws = self._draws(state, ids, cfg)
        labels = task_labels(self.groups.ways, cfg.five.images_per_class, self.device)
        if cfg.generator == "sequential":
            out = self._recover_sequential(state, ids, normalization, cfg, adversarial, z, draws, labels)
        else:
            theta, learner_params = dict(state.generator.named_parameters()), dict(state.learner.named_parameters())
            parts = self.groups.split(ids)
            outs = []
            for part in parts:  # a mixed pool's many compiled variants: see fastfree.engine.five.RECOMPILE_LIMIT
                outs.append(self._five_of(part.group, state, normalization, cfg)(
                    theta, take(z, parts, part), self.groups.local_ids(part), take(draws, parts, part),
                    learner_params, labels, adversarial))
            out = merge_outputs(parts, outs)
        eta_rate, loss = out.eta.mean(1).tolist(), out.loss.tolist()  # one read per iteration (metrics)
        tasks = [RecoveredTask(out.images[i], labels, tid, eta_rate[i], loss[i]) for i, tid in enumerate(ids)]
        return tasks, out.meta_grad

    def _draws(self, state: FreeState, ids: list[int], cfg: FreeConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sampled teacher's latent codes [b, n, d] and k+1 augmentation draws [b, k+1, 3], drawn on
        the host in the reference's order, one copy each to the device."""
        five, gen = cfg.five, state.generator
        dtype = next(gen.parameters()).dtype
        n = self.groups.ways * five.images_per_class
        z = torch.stack([torch.randn(n, gen.latent_dim, generator=state.rngs["latent"], dtype=dtype) for _ in ids])
        if five.augment:
            draws = draw_table(len(ids), five.k + 1, five.pad, state.rngs["augment"])
        else:
            draws = torch.zeros(len(ids), five.k + 1, 3, dtype=torch.long)
        return _to(z, self.device), _to(draws, self.device)

    def _recover_sequential(self, state: FreeState, ids: list[int], normalization: Normalization, cfg: FreeConfig,
                            adversarial: bool, z: torch.Tensor, draws: torch.Tensor,
                            labels: torch.Tensor) -> FiveOutputs:
        """Table 5's baseline generator (no meta-learning), as five_reference(sequential=True) does it: each
        teacher's k steps start from the generator the previous teacher's left, copied into the generator.
        The teachers cannot batch, so each is a one-teacher epoch of its group's FastFive (its compiled
        functions and CUDA graph); the draws are the meta path's, the reference's order. The meta-gradient
        (the teachers' mean, as the reference's) goes unused: the trainer steps no meta-generator here."""
        gen, learner_params = state.generator, dict(state.learner.named_parameters())
        outs = []
        for i, tid in enumerate(ids):
            (part,) = self.groups.split([tid])
            out = self._five_of(part.group, state, normalization, cfg)(
                dict(gen.named_parameters()), z[i:i + 1], self.groups.local_ids(part), draws[i:i + 1],
                learner_params, labels, adversarial, keep_adapted=True)
            with torch.no_grad():
                for name, p in gen.named_parameters():
                    p.copy_(out.adapted[name][0])
            outs.append(out)
        meta_grad = {n: torch.stack([o.meta_grad[n] for o in outs]).mean(0) for n in outs[0].meta_grad}
        return FiveOutputs(meta_grad, *(torch.cat([getattr(o, f) for o in outs]) for f in ("images", "eta", "loss")))

    def _five_of(self, group: int, state: FreeState, normalization: Normalization, cfg: FreeConfig) -> FastFive:
        if group not in self._fives:
            self._fives[group] = FastFive(state.generator, self.groups.groups[group], state.learner, normalization,
                                          cfg.five, self.options, self.device)
        return self._fives[group]

    def learn(self, state: FreeState, tasks: list[RecoveredTask], ids: list[int], normalization: Normalization,
              cfg: FreeConfig) -> list[float]:
        images = torch.stack([t.images for t in tasks])
        losses = bell_fast(state.learner, images, tasks[0].labels, self.groups.gather(ids), self.groups,
                           normalization, cfg.bell, self.options, state.learner_opt)
        return losses.tolist()

    def alignment(self, state: FreeState, tasks: list[RecoveredTask], ids: list[int], normalization: Normalization,
                  cfg: FreeConfig) -> dict:
        return gradient_alignment(state.learner, tasks, [self.groups.bound(i) for i in ids], normalization,
                                  cfg.bell.targets)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without blocking the host (pinned staging on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
