"""The fused loss kernels against the torch reference (`fastfree.free.losses`).

CPU tests run the Triton kernels under TRITON_INTERPRET=1 (set by this folder's conftest);
GPU tests (marked `gpu`) run the compiled kernels in bf16/fp16 and inside a CUDA graph.
"""

import importlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastfree.free import losses as ref
from tests.kernels.conftest import TRITON_IMPORTED_EARLY

import fastfree.kernels as fk  # noqa: E402  (after the conftest set TRITON_INTERPRET)
from fastfree.kernels import _dispatch
from fastfree.kernels import reference as torch_impl

if not _dispatch.INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "triton was imported before tests/conftest.py could set TRITON_INTERPRET=1"
        if TRITON_IMPORTED_EARLY
        else "TRITON_INTERPRET is not 1 and there is no GPU: the kernels cannot run",
        allow_module_level=True,
    )

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _dispatch.INTERPRET, reason="needs TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.gpu),
]
TOL = dict(atol=1e-5, rtol=1e-5)


def make(rows_shape, classes, device="cpu", dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    m = (torch.randn(*rows_shape, classes, generator=g) * scale).to(device, dtype)
    f = (torch.randn(*rows_shape, classes, generator=g) * scale).to(device, dtype)
    y = torch.randint(0, classes, rows_shape, generator=g).to(device)
    return m, f, y


def ref_rows(m, f, y, adversarial=True):
    """Reference per-row Eq. 1 loss on rows of any shape (the reference wants [B, C])."""
    c = m.shape[-1]
    ce = F.cross_entropy(m.float().reshape(-1, c), y.reshape(-1), reduction="none").reshape(y.shape)
    eta = (m.argmax(-1) == f.argmax(-1)).float()
    return ce - eta * ref.kl_per_sample(m, f.detach()) if adversarial else ce


def check_inversion(m, f, y, adversarial=True, upstream=3.7, tol=TOL):
    """Kernel vs reference: loss, eta and dL/dM for loss * upstream; inputs left untouched."""
    c = m.shape[-1]
    saved = (m.clone(), f.clone(), y.clone())
    mk = m.clone().requires_grad_()
    loss, eta = fk.inversion_loss(mk, f, y, adversarial)
    (loss * upstream).backward()
    mr = m.clone().requires_grad_()
    loss_r, eta_r = ref.inversion_loss(mr.reshape(-1, c), f.reshape(-1, c), y.reshape(-1), adversarial)
    (loss_r * upstream).backward()
    assert loss.dtype == loss_r.dtype and eta.dtype == eta_r.dtype
    torch.testing.assert_close(loss, loss_r, **tol)
    assert torch.equal(eta.reshape(-1), eta_r)
    torch.testing.assert_close(mk.grad, mr.grad, **tol)
    assert mk.grad.dtype == m.dtype
    for before, after in zip(saved, (m, f, y)):
        assert torch.equal(before, after)
    return loss, eta, mk.grad


def check_distillation(m, f, upstream=3.7, tol=TOL):
    saved = (m.clone(), f.clone())
    mk, fk_ = m.clone().requires_grad_(), f.clone().requires_grad_()
    (fk.distillation_loss(mk, fk_) * upstream).backward()
    fr = f.clone().requires_grad_()
    loss_r = ref.distillation_loss(m, fr)
    (loss_r * upstream).backward()
    loss = fk.distillation_loss(m, f)
    torch.testing.assert_close(loss, loss_r.detach(), **tol)
    torch.testing.assert_close(fk_.grad, fr.grad, **tol)
    assert mk.grad is None  # the teacher gets no gradient
    assert torch.equal(saved[0], m) and torch.equal(saved[1], f)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("adversarial", [True, False])
@pytest.mark.parametrize("rows, classes", [((1,), 5), ((37,), 7), ((300,), 100), ((4, 100), 5), ((3, 7, 2), 7)])
def test_inversion_matches_reference(device, adversarial, rows, classes):
    m, f, y = make(rows, classes, device)
    f.view(-1, classes)[::3] = m.view(-1, classes)[::3]  # some rows agree (eta = 1)
    _, eta, _ = check_inversion(m, f, y, adversarial)
    assert 0 < eta.sum() < eta.numel() or eta.numel() == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows, classes", [((1,), 5), ((37,), 7), ((300,), 100), ((4, 100), 5)])
def test_distillation_matches_reference(device, rows, classes):
    m, f, _ = make(rows, classes, device)
    check_distillation(m, f)


@pytest.mark.parametrize("device", DEVICES)
def test_large_batch(device):
    """65,536 rows x 5 (the interpreter runs it in well under a second: 32 programs)."""
    m, f, y = make((65536,), 5, device, seed=1)
    check_inversion(m, f, y)
    check_distillation(m, f)


@pytest.mark.parametrize("device", DEVICES)
def test_argmax_ties_take_the_first_index(device):
    m = torch.tensor([[1.0, 3, 3, 0, 0], [1, 3, 3, 0, 0], [0, 0, 0, 0, 0], [2, 2, 2, 2, 2], [0, 1, 5, 5, 0]])
    f = torch.tensor([[0.0, 3, 3, 1, 1], [0, 2, 4, 4, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [5, 0, 5, 5, 5]])
    y = torch.tensor([1, 2, 0, 4, 3])
    _, eta, _ = check_inversion(m.to(device), f.to(device), y.to(device))
    assert eta.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits(device):
    m, f, y = make((50,), 7, device, seed=2)
    m, f = torch.sign(m) * 1e4, torch.sign(f) * 1e4 * torch.rand_like(f)
    f[:10] = m[:10]
    loss, _, grad = check_inversion(m, f, y, tol=dict(atol=1e-4, rtol=1e-5))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    check_distillation(m, f, tol=dict(atol=1e-3, rtol=1e-5))


@pytest.mark.parametrize("device", DEVICES)
def test_per_row_upstream_gradient(device):
    """A weighted sum of the per-row losses (upstream gradient differs per row)."""
    m, f, y = make((4, 33), 5, device, seed=3)
    f[:, ::2] = m[:, ::2]
    w = torch.rand(4, 33, device=device) * 3
    mk, mr = m.clone().requires_grad_(), m.clone().requires_grad_()
    rows, eta = fk.inversion_loss_rows(mk, f, y)
    (rows * w).sum().backward()
    rows_r = ref_rows(mr, f, y)
    (rows_r * w).sum().backward()
    torch.testing.assert_close(rows, rows_r.detach(), **TOL)
    torch.testing.assert_close(mk.grad, mr.grad, **TOL)
    assert not eta.requires_grad
    fs, fr = f.clone().requires_grad_(), f.clone().requires_grad_()
    (fk.kl_rows(m, fs) * w).sum().backward()
    (ref.kl_per_sample(m, fr) * w).sum().backward()
    torch.testing.assert_close(fs.grad, fr.grad, **TOL)


def test_op_autograd_recomputes_when_forward_skipped_the_gradient():
    """The op's registered autograd formula, with compute_grad=False in the forward."""
    m, f, y = make((21,), 7, seed=4)
    mk, mr = m.clone().requires_grad_(), m.clone().requires_grad_()
    loss, _, unit = torch.ops.fastfree.inversion_loss_rows(mk, f, y, True, False)
    assert unit.numel() == 0
    (loss * torch.arange(21.0)).sum().backward()
    (ref_rows(mr, f, y) * torch.arange(21.0)).sum().backward()
    torch.testing.assert_close(mk.grad, mr.grad, **TOL)
    fk_, fr = f.clone().requires_grad_(), f.clone().requires_grad_()
    torch.ops.fastfree.kl_rows(m, fk_, False)[0].sum().backward()
    ref.kl_per_sample(m, fr).sum().backward()
    torch.testing.assert_close(fk_.grad, fr.grad, **TOL)


def test_cpu_takes_the_kernel_under_the_interpreter(monkeypatch):
    if not _dispatch.INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")

    def fail(*args, **kwargs):
        raise AssertionError("the torch path ran instead of the kernel")

    monkeypatch.setattr(torch_impl, "inversion_rows", fail)
    monkeypatch.setattr(torch_impl, "kl_rows", fail)
    m, f, y = make((10,), 5)
    fk.inversion_loss(m.requires_grad_(), f, y)[0].backward()
    fk.distillation_loss(m, f.requires_grad_()).backward()


def test_float64_takes_the_torch_path():
    m, f, y = make((13,), 5, dtype=torch.float64)
    check_inversion(m, f, y, tol=dict(atol=1e-12, rtol=1e-12))
    check_distillation(m, f, tol=dict(atol=1e-12, rtol=1e-12))


def test_no_numpy_warnings_from_masked_rows_and_columns():
    if not _dispatch.INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    m, f, y = make((3,), 7)  # 3 of BLOCK_R rows, 7 of 8 columns
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        loss, _ = fk.inversion_loss(m.requires_grad_(), f, y)
        loss.backward()
        fk.distillation_loss(m, f.requires_grad_()).backward()
    assert torch.isfinite(m.grad).all() and torch.isfinite(f.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_labels_out_of_range_give_nan_rows(device):
    """Torch raises on a label outside [0, C); the kernel cannot without a host sync, so those rows
    (and only those) come out NaN, loss and gradient, instead of a CE that silently reads 0."""
    if device == "cpu" and not _dispatch.INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    m, f, y = make((6,), 5, device, seed=6)
    y[1], y[3], y[4] = 5, -1, -100
    mk = m.clone().requires_grad_()
    rows, _ = fk.inversion_loss_rows(mk, f, y)
    rows.sum().backward()
    bad = torch.tensor([False, True, False, True, False, False], device=device)
    assert rows[bad].isnan().all() and mk.grad[bad].isnan().all()
    good = ~bad
    mr = m.clone().requires_grad_()
    ref_rows(mr[good], f[good], y[good]).sum().backward()
    torch.testing.assert_close(mk.grad[good], mr.grad[good], **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_vmap(device):
    """torch.func.vmap (batch dims folded into rows) and vmap(grad) match the reference."""
    m, f, y = make((4, 10), 5, device, seed=5)
    f[:, ::2] = m[:, ::2]

    def mine(m, f, y):
        return fk.inversion_loss(m, f, y)[0]

    def theirs(m, f, y):
        return ref.inversion_loss(m, f, y)[0]

    vmap, grad = torch.func.vmap, torch.func.grad
    torch.testing.assert_close(vmap(mine)(m, f, y), vmap(theirs)(m, f, y), **TOL)
    torch.testing.assert_close(
        vmap(mine, in_dims=(0, None, None))(m, f[0], y[0]), vmap(theirs, in_dims=(0, None, None))(m, f[0], y[0]), **TOL
    )
    torch.testing.assert_close(vmap(grad(mine))(m, f, y), vmap(grad(theirs))(m, f, y), **TOL)
    torch.testing.assert_close(
        vmap(grad(fk.distillation_loss, argnums=1))(m, f), vmap(grad(ref.distillation_loss, argnums=1))(m, f), **TOL
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_through_vmap_taken_outside_it(device):
    """grad(vmap(loss)) and vmap(loss) then backward: inside vmap a tensor reports requires_grad False
    even where the tensor it wraps tracks a gradient; the losses gave a silent zero gradient there
    (and BELL's --learner-update erm, vmap then backward, stopped on the kernel path)."""
    m, f, y = make((3, 7), 5, device, seed=7)
    f[:, ::2] = m[:, ::2]
    vmap, grad = torch.func.vmap, torch.func.grad

    def total(fn):
        return lambda m: vmap(lambda r, q, l: fn(r, q, l)[0])(m, f, y).sum()

    want = grad(total(ref.inversion_loss))(m)
    assert want.abs().sum() > 0
    torch.testing.assert_close(grad(total(fk.inversion_loss))(m), want, **TOL)
    torch.testing.assert_close(grad(lambda q: vmap(fk.distillation_loss)(m, q).sum())(f),
                               grad(lambda q: vmap(ref.distillation_loss)(m, q).sum())(f), **TOL)
    for fn, other in ((fk, ref),):
        a, b = m.clone().requires_grad_(), m.clone().requires_grad_()
        vmap(lambda r, q, l: fn.inversion_loss(r, q, l)[0])(a, f, y).sum().backward()
        vmap(lambda r, q, l: other.inversion_loss(r, q, l)[0])(b, f, y).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, **TOL)
        a, b = f.clone().requires_grad_(), f.clone().requires_grad_()
        vmap(fn.distillation_loss)(m, a).sum().backward()
        vmap(other.distillation_loss)(m, b).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    """torch.compile traces the ops without a graph break (CPU: aot_eager; GPU: inductor). On a CPU the
    traced call takes the ops' torch path (the interpreter needs real data, kernels/_dispatch.py:
    launchable), so there this checks the ops' registration and formulas under tracing; the kernel
    itself is traced only on the GPU."""
    torch._dynamo.reset()
    backend = "inductor" if device == "cuda" else "aot_eager"
    m, f, y = make((4, 25), 5, device, seed=6)

    def step(m, f, y):
        loss, eta = fk.inversion_loss(m, f, y)
        return loss + fk.distillation_loss(m, f), eta

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    mk, mr = m.clone().requires_grad_(), m.clone().requires_grad_()
    loss, eta = compiled(mk, f, y)
    loss.backward()
    loss_r = ref_rows(mr, f, y).mean() + ref.distillation_loss(mr, f)  # teacher detached there
    loss_r.backward()
    torch.testing.assert_close(loss, loss_r, **TOL)
    torch.testing.assert_close(mk.grad, mr.grad, **TOL)


def test_flop_formula_counts_the_ops():
    from torch.utils.flop_counter import FlopCounterMode

    m, f, y = make((100,), 5)
    with FlopCounterMode(display=False) as counter:
        fk.inversion_loss(m.requires_grad_(), f, y)[0].backward()
        fk.distillation_loss(m, f.requires_grad_())
    # the modules (the package's attributes of the same names are the functions)
    il = importlib.import_module("fastfree.kernels.inversion_loss")
    dl = importlib.import_module("fastfree.kernels.distillation_loss")

    expected = 500 * (il.FWD_FLOPS_PER_ELEMENT + il.GRAD_FLOPS_PER_ELEMENT) + 500 * (
        dl.FWD_FLOPS_PER_ELEMENT + dl.GRAD_FLOPS_PER_ELEMENT
    )
    assert counter.get_total_flops() == expected > 0


def test_use_triton():
    assert fk.use_triton(torch.zeros(1)) == _dispatch.INTERPRET
    if torch.cuda.is_available():
        assert fk.use_triton(torch.zeros(1, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, classes", [((4, 100), 5), ((65536,), 100)])
def test_low_precision_gpu(dtype, rows, classes):
    """bf16/fp16 logits, float32 accumulation; compared with the reference on the same logits."""
    m, f, y = make(rows, classes, "cuda", dtype, seed=7)
    f.view(-1, classes)[::3] = m.view(-1, classes)[::3]
    # Both sides compute in fp32 from identical inputs; the gradients are rounded to `dtype`, where a
    # last-bit fp32 difference can move one ulp: 2^-8 relative (bf16), 2^-11 (fp16).
    tol = dict(atol=1e-5, rtol=1.6e-2 if dtype == torch.bfloat16 else 2e-3)
    loss, _, grad = check_inversion(m, f, y, tol=tol)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    check_distillation(m, f, tol=tol)


@pytest.mark.gpu
def test_cuda_graph_capture():
    m, f, y = make((4, 100), 5, "cuda", seed=8)
    static_m = m.clone().requires_grad_()

    def step():
        static_m.grad = None
        loss, eta = fk.inversion_loss(static_m, f, y)
        loss.backward()
        return loss.detach(), static_m.grad

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_m.grad = None
    with torch.cuda.graph(graph):
        loss_g = fk.inversion_loss(static_m, f, y)[0]
        loss_g.backward()
    for seed in range(3):
        new_m, _, _ = make((4, 100), 5, "cuda", seed=20 + seed)
        with torch.no_grad():
            static_m.copy_(new_m)
        graph.replay()
        mr = new_m.clone().requires_grad_()
        loss_r = ref_rows(mr, f, y).mean()
        loss_r.backward()
        torch.testing.assert_close(loss_g, loss_r.detach(), **TOL)
        torch.testing.assert_close(static_m.grad, mr.grad, **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_eager_backward_is_the_ops_own_formula(device):
    """Called eagerly, the losses' backward is one node: the op's registered formula (one multiply),
    not the plain-op attachment that grad, vmap and torch.compile need (kernels/_attach.py), which costs
    a subtraction, a cast, a multiply, a sum and an add each way: launches that decide the eager
    benchmark at the engine's sizes (T=4 x B=100 x C=5)."""

    def nodes(t):
        seen, todo = set(), [t.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is not None and fn not in seen:
                seen.add(fn)
                todo += [f for f, _ in fn.next_functions]
        return sorted(type(fn).__name__ for fn in seen)

    m, f, y = make((4, 100), 5, device)
    rows, _ = fk.inversion_loss_rows(m.clone().requires_grad_(), f, y)
    kl = fk.kl_rows(m, f.clone().requires_grad_())
    for out in (rows, kl):
        names = nodes(out)
        assert len(names) == 2 and "AccumulateGrad" in names, names  # the op's node, then the leaf
    # under a transform the attachment is used, and still right (test_vmap, test_compile_fullgraph)
    from torch.func import grad

    g = grad(lambda x: fk.inversion_loss(x, f, y)[0])(m)
    mk = m.clone().requires_grad_()
    fk.inversion_loss(mk, f, y)[0].backward()
    torch.testing.assert_close(g, mk.grad, **TOL)
