"""FIVE (Algorithm 1), batched: all b teachers' k-step inversions as one pure function.

The b generator clones and latent codes are stacked tensors [b, ...]; the inner loop is k
steps of torch.func.grad through generator -> crop/flip -> normalisation -> teacher (the
meta-learner only supplies its no-grad logits), each followed by a functional Adam step
(fastfree.optim.adam_step, its step count a device tensor) on the stacked tensors, which is
exactly b independent torch.optim.Adam instances. The meta-gradient is the gradient at the
adapted weights with the (k+1)-th augmentation draw, averaged over teachers in one pass.

The generator runs from a template whose upsample-then-convolve layers are one stride-2
transposed convolution each (fastfree.engine.upsample_conv: 4/9 of the epoch's dominant
multiply-adds); its parameters are the paper's, by the same names.

Teachers are mapped either with vmap (one grouped kernel per layer: the GPU path) or with a
Python loop over the same per-teacher function (faster on a CPU, see EngineOptions); both
give the reference's numbers (tests in float64). The inner step and the meta-gradient are pure
functions that torch.compile wraps (boundary outside vmap/grad; one graph each, reused by all k
steps); a CUDA graph captures the whole epoch.

A mixed pool runs one FastFive per architecture group on that group's share of the sampled
teachers; `merge_outputs` weighs each group's mean meta-gradient by its share m/b, which is
the reference's (1/b) sum over all b teachers, and restores the sampled order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map, tree_map_only

from fastfree.data.split import Normalization
from fastfree.engine.augment import crop_flip_indexed
from fastfree.engine.batchnorm import affine_outside_batchnorm_
from fastfree.engine.graphs import GraphedCallable
from fastfree.engine.groups import GroupPart, merge, whole
from fastfree.engine.options import EngineOptions
from fastfree.engine.teachers import StackedTeachers
from fastfree.engine.upsample_conv import fuse_upsample_conv_
from fastfree.free.five import FiveConfig
from fastfree.free.losses import kl_per_sample
from fastfree.layout import cpu_layout
from fastfree.optim import AdamState, adam_step

Z = "z"  # the latent codes' key in the inner optimiser's parameter dict (generator names contain dots)


@dataclass
class FiveOutputs:
    """One FIVE epoch of b teachers, all on the device (nothing read back)."""

    meta_grad: dict[str, torch.Tensor]  # (1/b) sum_i grad L^k_i, by generator parameter name
    images: torch.Tensor  # [b, n, C, H, W] recovered tasks in [0, 1]
    eta: torch.Tensor  # [b, n] agreement of teacher and learner on the final images
    loss: torch.Tensor  # [b] each teacher's L^k
    # [b, ...] each teacher's generator after its k steps, by parameter name; only where asked for
    # (keep_adapted: the sequential-generator ablation starts the next teacher from it)
    adapted: dict[str, torch.Tensor] | None = None


def eq1_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, adversarial: bool,
             kernels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 per row, fp32 (float64 stays float64), and eta; the same arithmetic as free.losses."""
    if kernels:
        from fastfree.kernels import inversion_loss_rows

        return inversion_loss_rows(teacher_logits, student_logits, labels, adversarial)
    t = teacher_logits if teacher_logits.dtype == torch.float64 else teacher_logits.float()
    s = (student_logits if student_logits.dtype == torch.float64 else student_logits.float()).detach()
    ce = F.cross_entropy(t, labels, reduction="none")
    eta = (t.argmax(-1) == s.argmax(-1)).to(ce.dtype)
    return (ce - eta * kl_per_sample(t, s) if adversarial else ce), eta


def make_objective(generator: nn.Module, teachers: StackedTeachers, learner: nn.Module, normalization: Normalization,
                   cfg: FiveConfig, adversarial: bool, options: EngineOptions, device: torch.device) -> Callable:
    """L_G for one teacher: (theta, z, teacher tensors, draw, learner params, labels) -> (loss, (x, eta, loss)).

    `generator` is only a template for functional_call (its BatchNorm with the affine map outside
    the native kernel: see fastfree.engine.batchnorm). The normalisation constants are made here,
    once, not inside the function a CUDA graph captures.
    """
    mean, std = normalization.tensors(device, next(generator.parameters()).dtype)

    def objective(theta, z, teacher, draw, learner_params, labels):
        with options.autocast(device):
            x = functional_call(generator, theta, (z,))
        x = x.to(z.dtype)  # images (and the pixel gradients) stay in the parameters' precision
        view = crop_flip_indexed(x, draw, cfg.pad) if cfg.augment else x
        view = (view - mean) / std  # normalization.unit with the constants made above
        if not options.five_vmap:  # a CPU's teachers and learner run faster channels-last (fastfree/layout.py)
            view = cpu_layout(view)
        with options.autocast(device):
            teacher_logits = teachers.forward(teacher, view)
            with torch.no_grad():
                student_logits = functional_call(learner, learner_params, (view,))
        rows, eta = eq1_rows(teacher_logits, student_logits, labels, adversarial, options.kernels)
        loss = rows.mean()
        return loss, (x, eta, loss.detach())

    return objective


def map_teachers(fn: Callable, in_dims: tuple, vectorize: bool, size: int) -> Callable:
    """vmap(fn, in_dims), or a loop over the `size` entries of the mapped dimension, outputs stacked."""
    if vectorize:
        return vmap(fn, in_dims=in_dims)

    def looped(*args):
        outs = [fn(*(a if d is None else tree_map(lambda t: t[i], a) for a, d in zip(args, in_dims)))
                for i in range(size)]
        return tree_map(lambda *xs: torch.stack(xs), *outs)

    return looped


def inner_step(params: dict[str, torch.Tensor], state: AdamState, teacher: dict[str, torch.Tensor], draw: torch.Tensor,
               learner_params: dict[str, torch.Tensor], labels: torch.Tensor, *, teacher_grad: Callable,
               adam: Callable, vectorize: bool) -> tuple[dict[str, torch.Tensor], AdamState]:
    """Pure: one Adam step on L_G for b teachers at once (params holds theta [b, ...] and Z [b, n, d]).

    teacher_grad: grad(objective, argnums=(0, 1), has_aux=True), one teacher's; adam: adam_step with
    its learning rate and betas bound (either maybe compiled on its own: see FastFive._functions).
    """
    b = params[Z].shape[0]
    step_grad = map_teachers(teacher_grad, (0, 0, 0, 0, None, None), vectorize, b)
    theta = {n: p for n, p in params.items() if n != Z}
    (g_theta, g_z), _ = step_grad(theta, params[Z], teacher, draw, learner_params, labels)
    return adam(params, {**g_theta, Z: g_z}, state)


def meta_gradient(params: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], draw: torch.Tensor,
                  learner_params: dict[str, torch.Tensor], labels: torch.Tensor, *, teacher_grad: Callable,
                  vectorize: bool):
    """Pure: the gradient at the adapted weights, averaged over teachers, and the recovered tasks
    (teacher_grad: grad(objective, has_aux=True), one teacher's)."""
    b = params[Z].shape[0]
    final = map_teachers(teacher_grad, (0, 0, 0, 0, None, None), vectorize, b)
    theta = {n: p for n, p in params.items() if n != Z}
    g, (x, eta, loss) = final(theta, params[Z], teacher, draw, learner_params, labels)
    return {n: v.mean(0) for n, v in g.items()}, x.detach(), eta.detach(), loss.detach()


def five_epoch(theta0: dict[str, torch.Tensor], z0: torch.Tensor, teacher: dict[str, torch.Tensor], draws: torch.Tensor,
               learner_params: dict[str, torch.Tensor], labels: torch.Tensor, *, step: Callable, final: Callable,
               k: int):
    """k inner Adam steps for b teachers and the averaged meta-gradient (`step`/`final`: the two
    pure functions above, maybe compiled; the epoch itself is what a CUDA graph captures).

    theta0: the meta-generator's parameters (unstacked); z0 [b, n, d]; teacher [b, ...];
    draws [b, k+1, 3]. Returns (meta_grad, images [b, n, ...], eta [b, n], loss [b], adapted): adapted
    is each teacher's generator after the k steps ([b, ...] by name; the steps' own output, no copy).
    """
    b = z0.shape[0]
    params = {n: p.detach().expand(b, *p.shape).clone() for n, p in theta0.items()}
    params[Z] = z0
    state = AdamState.zeros_like(params)
    for i in range(k):
        params, state = step(params, state, teacher, draws[:, i], learner_params, labels)
    adapted = {n: p for n, p in params.items() if n != Z}
    return (*final(params, teacher, draws[:, k], learner_params, labels), adapted)


# Graphs torch.compile may keep per function (dynamo's recompile_limit, default 8; with fullgraph=True,
# going past it is a hard error). The engine's legitimate variants of one code object: 2 phases x each
# teacher count of an architecture group (vmap: shapes differ) x the groups of a mixed pool, and the
# loop's two teacher gradients share torch.func's wrapper code. Three architectures at b=4 already
# need 24; a recompile *after* warm-up is still a bug, which the tests catch with error_on_recompile.
# Set around each call of the compiled function (FastEngine once patched it around a whole epoch,
# which left FastFive's other users, e.g. bench_five, without it).
RECOMPILE_LIMIT = 256


def compiled(fn: Callable, backend: str) -> Callable:
    """torch.compile with the engine's settings (one full graph, fixed shapes; the boundary outside
    vmap/grad), called with room for the engine's variants (RECOMPILE_LIMIT)."""
    graph = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"

    def call(*args, **kwargs):
        # set and restored by hand: config.patch costs ~0.5 ms per call here, this ~4 us
        before = getattr(config, name)
        setattr(config, name, max(RECOMPILE_LIMIT, before))
        try:
            return graph(*args, **kwargs)
        finally:
            setattr(config, name, before)

    return call


class FastFive:
    """FIVE epochs for one run: the pure epoch, compiled and/or CUDA-graphed per warm-up phase.

    Two variants exist (warm-up: CE only; afterwards: Eq. 1), each compiled / captured once on
    first use, so switching phase never recompiles. In a mixed pool the number of a group's
    teachers changes from one iteration to the next; each count gets its own variant (a CUDA
    graph has fixed shapes), at most b per phase.
    """

    def __init__(self, generator: nn.Module, teachers: StackedTeachers, learner: nn.Module,
                 normalization: Normalization, cfg: FiveConfig, options: EngineOptions, device: torch.device):
        self.teachers, self.learner = teachers, learner
        # the module functional_call runs (parameters come from theta, by the generator's names): a copy
        # - whose upsample-then-convolve pairs are one transposed convolution each (fuse_upsample:
        #   fastfree.engine.upsample_conv);
        # - under vmap, whose BatchNorm applies its affine map outside the native kernel
        #   (fastfree.engine.batchnorm: the native one fails there in bf16). A loop over teachers (the
        #   CPU path) keeps the native layers, which are faster there (the demo's data recovery: 112 s
        #   with the copy, 103 s without, 2 threads).
        self.generator_template = copy.deepcopy(generator)
        if options.fuse_upsample:
            fuse_upsample_conv_(self.generator_template)
        if options.five_vmap:
            affine_outside_batchnorm_(self.generator_template)
        self.normalization, self.cfg, self.options, self.device = normalization, cfg, options, device
        self._epochs: dict[tuple[bool, int], Callable] = {}
        self._phase_functions: dict[bool, tuple[Callable, Callable]] = {}
        # one-time work done so far, each in the first call that needs it: a phase's compilation,
        # an epoch variant's CUDA-graph capture (the trainer times those calls apart from the rest)
        self.setups = 0

    def _functions(self, adversarial: bool) -> tuple[Callable, Callable]:
        """The epoch's inner step and meta-gradient for one phase, compiled at most once per phase and
        shared by every teacher count (a graph per count exists only where shapes differ: vmap's)."""
        if adversarial not in self._phase_functions:
            objective = make_objective(self.generator_template, self.teachers, self.learner, self.normalization,
                                       self.cfg, adversarial, self.options, self.device)
            vectorize, options = self.options.five_vmap, self.options
            step_grad = grad(objective, argnums=(0, 1), has_aux=True)
            final_grad = grad(objective, has_aux=True)
            adam = partial(adam_step, lr=self.cfg.lr, betas=self.cfg.betas)
            if options.compile and not vectorize:
                # a loop over teachers: compile one teacher's gradient (reused by all b teachers and k
                # steps) and the Adam step, not the loop, whose graph would be b times longer to compile
                # (CPU, inductor: 182 s vs vmap's 86 s for b=4 unrolled)
                step_grad, final_grad, adam = (compiled(f, options.compile_backend)
                                               for f in (step_grad, final_grad, adam))
            step = partial(inner_step, teacher_grad=step_grad, adam=adam, vectorize=vectorize)
            final = partial(meta_gradient, teacher_grad=final_grad, vectorize=vectorize)
            if options.compile and vectorize:  # one graph per function, reused by all k steps (compile time / (k+1))
                step, final = compiled(step, options.compile_backend), compiled(final, options.compile_backend)
            self._phase_functions[adversarial] = step, final
        return self._phase_functions[adversarial]

    def _epoch(self, adversarial: bool, b: int) -> Callable:
        if (adversarial, b) not in self._epochs:
            options, new_phase = self.options, adversarial not in self._phase_functions
            step, final = self._functions(adversarial)
            fn = partial(five_epoch, step=step, final=final, k=self.cfg.k)
            if options.cuda_graphs:  # a failed capture warns and runs this variant eagerly
                fn = GraphedCallable(fn, name="FIVE's epoch")
            # one-time work in this variant's first call: compiling (a new phase; with vmap also a new
            # teacher count, whose shapes differ) and capturing its CUDA graph
            if options.cuda_graphs or (options.compile and (new_phase or options.five_vmap)):
                self.setups += 1
            self._epochs[adversarial, b] = fn
        return self._epochs[adversarial, b]

    @property
    def graph_fallbacks(self) -> list[str]:
        """Why the CUDA-graph capture of an epoch variant failed (it then runs eagerly), for each that did."""
        return [f.fallback for f in self._epochs.values() if isinstance(f, GraphedCallable) and f.fallback]

    def __call__(self, theta: dict[str, torch.Tensor], z: torch.Tensor, teacher_ids: torch.Tensor, draws: torch.Tensor,
                 learner_params: dict[str, torch.Tensor], labels: torch.Tensor, adversarial: bool,
                 keep_adapted: bool = False) -> FiveOutputs:
        """One epoch; keep_adapted also returns each teacher's adapted generator (FiveOutputs.adapted)."""
        teacher = self.teachers.gather(teacher_ids)
        *outs, adapted = self._epoch(adversarial, z.shape[0])(theta, z, teacher, draws, learner_params, labels)
        kept = (*outs, adapted) if keep_adapted else (*outs, None)
        if self.options.cuda_graphs:  # outputs live in the graph's static buffers: keep copies
            kept = tree_map_only(torch.Tensor, torch.clone, kept)
        return FiveOutputs(*kept)


def merge_outputs(parts: list[GroupPart], outputs: list[FiveOutputs]) -> FiveOutputs:
    """The groups' FIVE epochs as one epoch of all b sampled teachers, in the sampled order.

    Group g's meta-gradient is the mean over its m_g teachers; the reference's is the mean over
    all b = sum m_g, i.e. sum_g (m_g / b) mean_g.
    """
    if whole(parts):
        return outputs[0]
    b = sum(len(p) for p in parts)
    meta_grad = {n: sum(o.meta_grad[n] * (len(p) / b) for p, o in zip(parts, outputs)) for n in outputs[0].meta_grad}
    adapted = None if outputs[0].adapted is None else {
        n: merge(parts, [o.adapted[n] for o in outputs]) for n in outputs[0].adapted}
    return FiveOutputs(meta_grad, merge(parts, [o.images for o in outputs]), merge(parts, [o.eta for o in outputs]),
                       merge(parts, [o.loss for o in outputs]), adapted)
