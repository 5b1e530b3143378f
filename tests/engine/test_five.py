"""The fast FIVE epoch against the sequential reference (float64), and its compiled / bf16 variants."""

import copy
from functools import partial

import pytest
import torch

from fastfree.data.split import CIFAR100_NORM as NORM
from fastfree.engine.augment import crop_flip_indexed, draw_table
from fastfree.engine.five import FastFive
from fastfree.engine.options import EngineOptions
from fastfree.engine.teachers import StackedTeachers
from fastfree.errors import FastFreeError
from fastfree.free.augment import crop_flip, draw_crop_flip
from fastfree.free.five import FiveConfig, five_reference, task_labels
from fastfree.models import Conv4
from tests.free.helpers import tiny_models

CPU = torch.device("cpu")


def _setup(teachers=3, seed=0, batch_statistics=False):
    """Tiny float64 models. The learner is a perturbed copy of teacher 2, which agrees with it on
    most images (so Eq. 1's KL term and both values of eta are exercised), or with
    batch_statistics=True the real meta-learner (a Conv4 whose BatchNorm uses batch statistics)."""
    gen, ts, meta_learner = tiny_models(seed=seed, teachers=teachers)
    if batch_statistics:
        return gen, ts, meta_learner
    learner = copy.deepcopy(ts[2])
    noise = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=noise, dtype=p.dtype))
    return gen, ts, learner


def _fast(gen, ts, learner, cfg, ids, adversarial, options, seed_aug=1, seed_z=2, device=CPU):
    latent = torch.Generator().manual_seed(seed_z)
    z = torch.stack([torch.randn(cfg.images_per_class * 5, gen.latent_dim, generator=latent, dtype=torch.float64)
                     for _ in ids])
    draws = draw_table(len(ids), cfg.k + 1, cfg.pad, torch.Generator().manual_seed(seed_aug))
    five = FastFive(gen, StackedTeachers(ts), learner, NORM, cfg, options, device)
    return five(dict(gen.named_parameters()), z.to(device), torch.tensor(ids, device=device), draws.to(device),
                dict(learner.named_parameters()), task_labels(5, cfg.images_per_class, device), adversarial)


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
@pytest.mark.parametrize("b,k", [(1, 1), (1, 5), (3, 1), (3, 5)])
@pytest.mark.parametrize("adversarial", [True, False], ids=["eq1", "warmup"])
def test_fast_five_equals_the_reference_in_float64(vectorize, b, k, adversarial):
    _check_against_reference(vectorize, b, k, adversarial, batch_statistics=False)


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
def test_fast_five_equals_the_reference_with_the_batch_statistics_learner(vectorize):
    _check_against_reference(vectorize, 3, 2, True, batch_statistics=True)


@pytest.mark.gpu
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a capture that fell back to eager fails the test
@pytest.mark.parametrize("adversarial", [True, False], ids=["eq1", "warmup"])
@pytest.mark.parametrize("five_vmap,compile", [(None, False), (False, True)], ids=["vmap", "loop-compiled"])
def test_the_graphed_epoch_equals_the_reference_on_cuda_in_float64(adversarial, five_vmap, compile):
    """The CUDA defaults (vmap over teachers, the epoch captured in a CUDA graph) in float64, where
    the comparison is exact; the Triton losses are fp32 (their own GPU tests), so the torch ones here.
    loop-compiled: teachers looped, one teacher's gradient compiled by inductor, the epoch graphed."""
    options = EngineOptions.for_device(torch.device("cuda"), kernels=False, five_vmap=five_vmap, compile=compile)
    assert options.vectorize and options.cuda_graphs and options.five_vmap == (five_vmap is None)
    _check_against_reference(options, 3, 3, adversarial, batch_statistics=False, device=torch.device("cuda"))


def _check_against_reference(vectorize, b, k, adversarial, batch_statistics, device=CPU):
    """`vectorize`: a bool for EngineOptions(vectorize=...), or the EngineOptions themselves."""
    gen, ts, learner = _setup(batch_statistics=batch_statistics)
    gen, learner, ts = gen.to(device), learner.to(device), [t.to(device) for t in ts]
    cfg = FiveConfig(k=k, lr=0.01, images_per_class=4)
    ids = [2, 0, 2][:b]  # with a repeated teacher, as uniform sampling with replacement does
    tasks, meta_grad = five_reference(gen, [ts[i] for i in ids], ids, learner, NORM, cfg, adversarial,
                                      torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    options = vectorize if isinstance(vectorize, EngineOptions) else EngineOptions(vectorize=vectorize)
    out = _fast(gen, ts, learner, cfg, ids, adversarial, options, device=device)
    for name, g in meta_grad.items():
        torch.testing.assert_close(out.meta_grad[name], g, rtol=1e-10, atol=1e-13, msg=name)
    for i, task in enumerate(tasks):
        torch.testing.assert_close(out.images[i], task.images, rtol=1e-10, atol=1e-13)
        assert out.eta[i].mean().item() == pytest.approx(task.eta_rate, abs=1e-12)
        assert out.loss[i].item() == pytest.approx(task.final_loss, rel=1e-10)
    if adversarial and not batch_statistics:
        assert 0 < out.eta.mean() < 1, "the test must exercise both branches of eta"


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
def test_the_epoch_makes_no_tensor_from_host_data(vectorize):
    """What a CUDA graph captures must not copy host data to the device (a capture refuses it:
    found on an H100, where the normalisation constants were made inside the epoch). On a CPU
    that mistake shows as aten.lift_fresh, torch.tensor of host data."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(str(func))
            return func(*args, **(kwargs or {}))

    gen, ts, learner = _setup()
    cfg = FiveConfig(k=2, lr=0.01, images_per_class=4)
    five = FastFive(gen, StackedTeachers(ts), learner, NORM, cfg, EngineOptions(vectorize=vectorize), CPU)
    epoch = five._epoch(True, 2)  # the function a CUDA graph would capture
    z = torch.randn(2, 20, 8, dtype=torch.float64)
    draws = draw_table(2, 3, 4, torch.Generator().manual_seed(0))
    args = (dict(gen.named_parameters()), z, five.teachers.gather(torch.tensor([0, 1])), draws,
            dict(learner.named_parameters()), task_labels(5, 4))
    seen: set[str] = set()
    with Ops():
        epoch(*args)
    assert "aten._log_softmax.default" in seen and "aten.lift_fresh.default" not in seen


def test_the_meta_generator_and_inputs_are_not_modified():
    gen, ts, learner = _setup()
    before = {n: p.detach().clone() for n, p in gen.named_parameters()}
    _fast(gen, ts, learner, FiveConfig(k=2, lr=0.01, images_per_class=4), [0, 1], True, EngineOptions())
    for n, p in gen.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None


def test_indexed_crop_flip_is_the_reference_augmentation():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    rng_a, rng_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    table = draw_table(4, 5, 4, rng_a)
    for draw in table.view(-1, 3):
        top, left, flip = draw_crop_flip(4, rng_b)
        assert draw.tolist() == [top, left, int(flip)]
        assert torch.equal(crop_flip_indexed(x, draw, 4), crop_flip(x, top, left, flip, 4))


def test_stacked_teachers_are_the_folded_teachers():
    _, ts, _ = tiny_models(teachers=3)
    stack = StackedTeachers(ts)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    got = torch.vmap(stack.forward, in_dims=(0, None))(stack.gather(torch.tensor([2, 0])), x)
    torch.testing.assert_close(got, torch.stack([ts[2](x), ts[0](x)]), rtol=1e-12, atol=1e-12)
    assert len(stack) == 3 and stack.ways == 5


def test_teachers_of_different_architectures_are_refused_with_the_fix():
    _, ts, _ = tiny_models(teachers=1)
    other = Conv4(num_classes=5, width=8, image_size=16).double().eval()
    with pytest.raises(FastFreeError, match="TeacherGroups"):
        StackedTeachers([ts[0], other])


def test_cuda_graphs_are_refused_off_cuda():
    with pytest.raises(FastFreeError, match="CUDA"):
        EngineOptions.for_device(CPU, cuda_graphs=True)
    assert EngineOptions.for_device(CPU) == EngineOptions()


def test_kernels_are_refused_off_cuda_unless_interpreted(monkeypatch):
    """Off CUDA the fused losses would take their torch path while the run recorded kernels=True."""
    import fastfree.kernels._dispatch as dispatch

    monkeypatch.setattr(dispatch, "INTERPRET", False)
    with pytest.raises(FastFreeError, match=r"--kernels runs the fused Triton losses on CUDA .* drop the flag"):
        EngineOptions.for_device(CPU, kernels=True)
    assert not EngineOptions.for_device(CPU, kernels=False).kernels
    monkeypatch.setattr(dispatch, "INTERPRET", True)  # the Triton interpreter runs them on a CPU: tests
    assert EngineOptions.for_device(CPU, kernels=True).kernels


def test_a_failed_graph_capture_warns_and_runs_the_epoch_eagerly(monkeypatch):
    """A capture error (simulated: on a CPU, _capture raises as CUDA does while recording) warns once
    and gives the eager epoch's values, then and on later calls; the reason is kept for the report."""
    from fastfree.engine.graphs import GraphedCallable

    def capture_fails(self, flat, spec):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphedCallable, "_capture", capture_fails)
    gen, ts, learner = _setup()
    cfg = FiveConfig(k=2, lr=0.01, images_per_class=4)
    with pytest.warns(RuntimeWarning, match="capture of FIVE's epoch failed"):
        got = _fast(gen, ts, learner, cfg, [2, 0], True, EngineOptions(cuda_graphs=True))
    want = _fast(gen, ts, learner, cfg, [2, 0], True, EngineOptions())
    for n in want.meta_grad:
        torch.testing.assert_close(got.meta_grad[n], want.meta_grad[n], rtol=0, atol=0)
    five = FastFive(gen, StackedTeachers(ts), learner, NORM, cfg, EngineOptions(cuda_graphs=True), CPU)
    with pytest.warns(RuntimeWarning):
        five._epoch(True, 2)(dict(gen.named_parameters()), torch.zeros(2, 20, 8, dtype=torch.float64),
                             five.teachers.gather(torch.tensor([0, 1])), draw_table(2, 3, 4, torch.Generator()),
                             dict(learner.named_parameters()), task_labels(5, 4))
    assert five.graph_fallbacks == ["RuntimeError: operation not permitted when stream is capturing"]


def test_bad_input_to_a_graphed_epoch_is_not_swallowed():
    """CPU tensors are the user's mistake (a FastFreeError naming the fix), not a capture failure."""
    gen, ts, learner = _setup()
    with pytest.raises(FastFreeError, match="--no-cuda-graphs"):
        _fast(gen, ts, learner, FiveConfig(k=1, lr=0.01, images_per_class=4), [0], True,
              EngineOptions(cuda_graphs=True))


@pytest.mark.parametrize("vectorize,backend,kernels", [(False, "inductor", False), (True, "eager", False),
                                                     (True, "aot_eager", True)], ids=["loop", "vmap", "vmap-kernels"])
def test_compiled_epoch_has_no_graph_break_no_recompile_and_equals_eager(vectorize, backend, kernels):
    """inductor generates code for the loop, the CPU's default teacher map (51-73 s cold; the vmapped
    graphs took 114 s, and the GPU tests compile those with inductor); graph breaks, recompiles and the
    graph count are dynamo's and show under its "eager" backend as well (vmap: 6 s vs 15 s under
    aot_eager, which the vmap-kernels case keeps for AOT autograd's tracing).
    vmap-kernels: the fused loss inside grad of vmap, compiled (it once failed to trace: an
    autograd.Function cannot be vmapped by torch.compile; see fastfree.kernels._attach). In float64
    the op computes with torch, but it is traced and vmapped as on CUDA."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    gen, ts, learner = _setup()
    cfg = FiveConfig(k=2, lr=0.01, images_per_class=4)
    options = EngineOptions(vectorize=vectorize, compile=True, compile_backend=backend, kernels=kernels)
    stack = StackedTeachers(ts)
    five = FastFive(gen, stack, learner, NORM, cfg, options, CPU)
    eager = FastFive(gen, stack, learner, NORM, cfg, EngineOptions(vectorize=vectorize, kernels=kernels), CPU)
    labels = task_labels(5, 4)
    theta, lp = dict(gen.named_parameters()), dict(learner.named_parameters())
    for seed in range(3):  # new latents, draws and teachers each time: the same graphs
        z = torch.randn(2, 20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        draws = draw_table(2, 3, 4, torch.Generator().manual_seed(seed))
        ids = torch.tensor([seed % 3, (seed + 1) % 3])
        # the first epoch compiles (warm-up); after it, any recompilation is an error
        with torch._dynamo.config.patch(error_on_recompile=seed > 0):
            got = five(theta, z, ids, draws, lp, labels, True)
        want = eager(theta, z, ids, draws, lp, labels, True)
        for n in want.meta_grad:
            torch.testing.assert_close(got.meta_grad[n], want.meta_grad[n], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got.images, want.images, rtol=1e-9, atol=1e-12)
    assert sum(counters["graph_break"].values()) == 0
    # vmap: the inner step (reused k times) and the meta-gradient; a loop: one teacher's two gradients
    # (reused by every teacher) and the Adam step, the loop itself left uncompiled
    assert counters["stats"]["unique_graphs"] == (2 if vectorize else 3)


@pytest.mark.parametrize("device,vectorize", [("cpu", False), ("cpu", True),
                                             pytest.param("cuda", None, marks=pytest.mark.gpu),
                                             pytest.param("cuda", False, marks=pytest.mark.gpu)],
                         ids=["cpu-loop", "cpu-vmap", "cuda", "cuda-loop"])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # on CUDA: a capture that fell back to eager fails
def test_bf16_autocast_keeps_the_meta_gradient_direction(device, vectorize):
    """bf16 against fp32; on CUDA with the device's defaults (vmap, CUDA graph, Triton losses).
    Under vmap the generator's BatchNorm once failed in bf16 (see fastfree.engine.batchnorm)."""
    device = torch.device(device)
    gen, ts, learner = _setup()
    gen, learner = gen.float().to(device), learner.float().to(device)
    ts = [t.float().to(device) for t in ts]
    cfg = FiveConfig(k=0, lr=0.01, images_per_class=4)
    outs = []
    for amp in (False, True):
        z = torch.randn(2, 20, 8, generator=torch.Generator().manual_seed(0)).to(device)
        draws = draw_table(2, 1, 4, torch.Generator().manual_seed(0)).to(device)
        options = EngineOptions.for_device(device, amp=amp, vectorize=vectorize)
        five = FastFive(gen, StackedTeachers(ts), learner, NORM, cfg, options, device)
        outs.append(five(dict(gen.named_parameters()), z, torch.tensor([0, 1], device=device), draws,
                         dict(learner.named_parameters()), task_labels(5, 4, device), True))
    fp32, bf16 = outs
    assert bf16.images.dtype == torch.float32 and bf16.loss.dtype == torch.float32
    flat = [torch.cat([o.meta_grad[n].flatten() for n in sorted(o.meta_grad)]) for o in outs]
    # bf16 keeps 8 mantissa bits: on these tiny models (ngf 4) the direction agrees to ~0.96
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.9
    # ...and bf16 did run: an amp switch that autocast nothing would pass the closeness checks
    assert not torch.equal(bf16.images, fp32.images) and not torch.equal(*flat)
    torch.testing.assert_close(bf16.images, fp32.images, atol=2e-2, rtol=0)  # bf16: 8 mantissa bits
    torch.testing.assert_close(bf16.loss, fp32.loss, rtol=2e-2, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("compile,vectorize", [(False, None), (True, None), (True, False)],
                         ids=["eager", "compiled", "compiled-loop"])
def test_cuda_graph_replays_equal_eager_over_three_epochs(compile, vectorize):
    """compiled-loop: teachers looped, one teacher's compiled gradient called for each inside the graph."""
    cuda = torch.device("cuda")
    gen, ts, learner = _setup()
    gen, learner = gen.float().to(cuda), learner.float().to(cuda)
    stack = StackedTeachers([t.float().to(cuda) for t in ts])
    cfg = FiveConfig(k=3, lr=0.01, images_per_class=4)
    graphed = FastFive(gen, stack, learner, NORM, cfg,
                       EngineOptions.for_device(cuda, compile=compile, vectorize=vectorize), cuda)
    eager = FastFive(gen, stack, learner, NORM, cfg, EngineOptions.for_device(cuda, cuda_graphs=False,
                                                                             compile=compile, vectorize=vectorize),
                     cuda)
    theta, lp = dict(gen.named_parameters()), dict(learner.named_parameters())
    for seed in range(3):  # fresh inputs each epoch, copied into the graph's static buffers
        z = torch.randn(2, 20, 8, generator=torch.Generator().manual_seed(seed)).to(cuda)
        draws = draw_table(2, cfg.k + 1, 4, torch.Generator().manual_seed(seed)).to(cuda)
        ids = torch.tensor([seed % 3, (seed + 1) % 3], device=cuda)
        got = graphed(theta, z, ids, draws, lp, task_labels(5, 4, cuda), True)
        want = eager(theta, z, ids, draws, lp, task_labels(5, 4, cuda), True)
        # fp32 on CUDA is not bitwise reproducible from run to run (upsample's backward and cuDNN's
        # weight gradients accumulate with atomics; an H100 gave up to 2.3e-6 apart on near-zero
        # entries), so each gradient is compared in norm; a stale or misfed graph buffer is O(1)
        # off. The exact comparison is the float64 test above.
        for n in want.meta_grad:
            assert (got.meta_grad[n] - want.meta_grad[n]).norm() <= 1e-4 * want.meta_grad[n].norm(), n
        torch.testing.assert_close(got.images, want.images, rtol=1e-4, atol=1e-6)
    assert graphed._epochs[True, 2].replays == 3


@pytest.mark.gpu
def test_a_graphed_epoch_keeps_each_calls_adapted_generator():
    """The sequential generator carries FiveOutputs.adapted to the next teacher: under a CUDA graph it must be
    a copy, not the graph's static buffer that the next replay overwrites."""
    cuda = torch.device("cuda")
    gen, ts, learner = _setup()
    gen, learner = gen.float().to(cuda), learner.float().to(cuda)
    stack = StackedTeachers([t.float().to(cuda) for t in ts])
    cfg = FiveConfig(k=2, lr=0.01, images_per_class=4)
    graphed = FastFive(gen, stack, learner, NORM, cfg, EngineOptions.for_device(cuda, compile=False), cuda)
    eager = FastFive(gen, stack, learner, NORM, cfg, EngineOptions.for_device(cuda, cuda_graphs=False,
                                                                             compile=False), cuda)
    theta, lp = dict(gen.named_parameters()), dict(learner.named_parameters())
    kept, wanted = [], []
    for seed in range(3):
        z = torch.randn(1, 20, 8, generator=torch.Generator().manual_seed(seed)).to(cuda)
        draws = draw_table(1, cfg.k + 1, 4, torch.Generator().manual_seed(seed)).to(cuda)
        ids = torch.tensor([seed], device=cuda)
        kept.append(graphed(theta, z, ids, draws, lp, task_labels(5, 4, cuda), True, keep_adapted=True).adapted)
        wanted.append(eager(theta, z, ids, draws, lp, task_labels(5, 4, cuda), True, keep_adapted=True).adapted)
    assert graphed._epochs[True, 1].replays == 3
    for got, want in zip(kept, wanted):  # each call's own, after later replays
        for n in want:
            assert (got[n] - want[n]).norm() <= 1e-4 * want[n].norm() + 1e-6, n


@pytest.mark.parametrize("vmap_teachers", [False, True], ids=["loop", "vmap"])
def test_compiled_graphs_hold_grouped_convolutions_only_when_teachers_are_vmapped(vmap_teachers):
    """What --teacher-map changes in the graphs the compiler gets (after AOT autograd, which sees
    inference graphs only): vmap maps b teachers' convolutions to grouped ones (groups = b), which inductor's
    layout heuristic weighs as slower in channels-last (torch/_inductor/graph.py, decide_layout_opt:
    for FIVE's inference graphs, by FLOPs; nearly all are grouped when vmapped); the loop's
    compiled graphs are one teacher's, with plain convolutions."""
    from torch._dynamo.backends.common import aot_autograd

    torch._dynamo.reset()
    groups, kinds = [], set()

    def record(gm, example_inputs, *, kind):  # groups: convolution's last argument, convolution_backward's 10th
        kinds.add(kind)
        for n in gm.graph.nodes:
            if n.target is torch.ops.aten.convolution.default:
                groups.append(n.args[-1])
            elif n.target is torch.ops.aten.convolution_backward.default:
                groups.append(n.args[9])
        return gm.forward

    b = 3
    gen, ts, learner = _setup()
    cfg = FiveConfig(k=1, lr=0.01, images_per_class=4)
    backend = aot_autograd(fw_compiler=partial(record, kind="forward"), bw_compiler=partial(record, kind="backward"),
                           inference_compiler=partial(record, kind="inference"))
    options = EngineOptions(vectorize=True, five_vmap=vmap_teachers, compile=True, compile_backend=backend)
    out = _fast(gen, ts, learner, cfg, list(range(b)), True, options)
    assert out.images.shape[0] == b and groups
    # torch.func takes the gradients inside the compiled functions: inductor gets inference graphs only,
    # whose layout heuristic weighs convolutions by FLOPs (the README's account of channels-last)
    assert kinds == {"inference"}
    # the learner's no-grad forward is unbatched (plain) either way
    assert set(groups) == ({1, b} if vmap_teachers else {1})


def test_a_mixed_pool_compiles_every_variant_it_needs():
    """A mixed pool runs one FastFive per architecture group, each with graphs per phase (and, vmapped,
    per teacher count): more than dynamo's default of 8 graphs per function, past which fullgraph=True
    fails hard (FailOnRecompileLimitHit). FastEngine used to raise the limit around its epochs, which
    left FastFive's other users (bench_five) without it; FastFive's compiled functions now carry it.
    Here 3 groups x 2 phases x the loop's two teacher gradients (torch.func's wrapper code, shared):
    12 graphs of one code object."""
    torch._dynamo.reset()
    gen, ts, learner = _setup()
    cfg = FiveConfig(k=1, lr=0.01, images_per_class=4)
    # dynamo's "eager" backend: the limit is dynamo's; code generation would only make this slower
    options = EngineOptions(vectorize=False, compile=True, compile_backend="eager")
    eager = FastFive(gen, StackedTeachers(ts), learner, NORM, cfg, EngineOptions(), CPU)
    theta, lp = dict(gen.named_parameters()), dict(learner.named_parameters())
    z = torch.randn(1, 20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for group in range(3):
        five = FastFive(gen, StackedTeachers(ts), learner, NORM, cfg, options, CPU)
        for adversarial in (False, True):
            args = (theta, z, torch.tensor([group]), draw_table(1, 2, 4, torch.Generator().manual_seed(group)), lp,
                    task_labels(5, 4), adversarial)
            torch.testing.assert_close(five(*args).images, eager(*args).images, rtol=1e-9, atol=1e-12)


def test_the_engines_compiled_functions_have_room_for_their_variants():
    """Plain torch.compile(fullgraph=True) fails at dynamo's 9th graph of one function; the engine's
    `compiled` does not (vmap's variants: 2 phases x teacher counts x groups, see RECOMPILE_LIMIT)."""
    from fastfree.engine.five import compiled

    torch._dynamo.reset()

    def double(x):
        return x * 2

    engine = compiled(double, "eager")
    for n in range(1, 13):  # 12 shapes, each its own graph (dynamic=False)
        assert engine(torch.ones(n)).sum() == 2 * n
    torch._dynamo.reset()
    plain = torch.compile(double, fullgraph=True, dynamic=False, backend="eager")
    with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
        for n in range(1, 13):
            plain(torch.ones(n))


@pytest.mark.parametrize("vmap_teachers,compile,new_count_sets_up", [(False, True, False), (True, True, True),
                                                                     (False, False, False)],
                         ids=["loop-compiled", "vmap-compiled", "eager"])
def test_setups_count_the_calls_that_compile(vmap_teachers, compile, new_count_sets_up):
    """FastFive.setups grows in the calls that compile (a new phase; vmapped, also a new teacher count)
    and never in eager ones: the trainer times those calls apart from data recovery."""
    torch._dynamo.reset()
    gen, ts, learner = _setup()
    cfg = FiveConfig(k=1, lr=0.01, images_per_class=4)
    options = EngineOptions(vectorize=vmap_teachers, compile=compile, compile_backend="eager")
    five = FastFive(gen, StackedTeachers(ts), learner, NORM, cfg, options, CPU)
    theta, lp = dict(gen.named_parameters()), dict(learner.named_parameters())
    grew = []
    for b, adversarial in [(1, False), (1, False), (2, False), (2, True), (2, True)]:
        before = five.setups
        z = torch.randn(b, 20, 8, dtype=torch.float64)
        five(theta, z, torch.arange(b), draw_table(b, 2, 4, torch.Generator().manual_seed(0)), lp, task_labels(5, 4),
             adversarial)
        grew.append(five.setups > before)
    assert grew == ([compile, False, new_count_sets_up, compile, False])
