"""The fast cross-task replay (torch.func grad over vmap over tasks) equals the sequential
reference in float64: gradients, summed loss, accuracy, and whole replay runs."""

import copy
import json

import pytest
import torch
from torch.func import functional_call

from fastfree.data.split import CIFAR100_NORM
from fastfree.engine.replay import maml_meta_batch_fast, meta_batch_loss_and_grads, replay_template
from fastfree.free.memory import MemoryBank
from fastfree.free.replay import ReplayConfig, maml_meta_batch_reference, replay
from fastfree.metatest.adapt import functional_template
from fastfree.models import Conv4
from fastfree.threads import torch_threads
from tests.free.helpers import filled_bank

SIZE = 16


def learner(seed=0, dtype=torch.float64, ways=3):
    torch.manual_seed(seed)
    return functional_template(Conv4(num_classes=ways, width=4, image_size=SIZE)).to(dtype)


def assert_same(fast, ref):
    grads, loss, acc = fast
    want, want_loss, want_acc = ref
    assert set(grads) == set(want)
    for n in want:
        # conv biases before a BatchNorm have a zero gradient (~1e-17 of rounding): hence atol
        torch.testing.assert_close(grads[n], want[n], rtol=1e-10, atol=1e-12, msg=n)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(acc, want_acc, rtol=1e-12, atol=0)


@pytest.mark.parametrize("chunk_size", [None, 1])
@pytest.mark.parametrize("meta_batch", [1, 3])
# without inner steps the two orders are one computation: that case once
@pytest.mark.parametrize("second_order,inner_steps", [(True, 0), (True, 1), (True, 3), (False, 1), (False, 3)])
def test_fast_meta_batch_equals_reference_float64(second_order, inner_steps, meta_batch, chunk_size):
    model = learner(inner_steps + 10 * meta_batch)
    batch = filled_bank(seed=meta_batch).sample_tasks(meta_batch, 3, 2, 3, torch.Generator().manual_seed(inner_steps))
    cfg = ReplayConfig(meta_batch=meta_batch, ways=3, shots=2, queries=3, inner_steps=inner_steps, inner_lr=0.3,
                       second_order=second_order)
    before = copy.deepcopy(model.state_dict())
    fast = maml_meta_batch_fast(model, batch, CIFAR100_NORM, cfg, chunk_size=chunk_size)
    assert_same(fast, maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg))
    grads, loss, acc = fast
    assert loss.shape == () and acc.shape == () and acc.dtype == torch.float64 and loss.dtype == torch.float64
    assert not loss.requires_grad and not any(g.requires_grad for g in grads.values())
    # the learner is untouched: no .grad, same parameters
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_second_order_is_not_first_order_and_the_fast_path_tells_them_apart():
    """So the equality above can fail: the two orders differ by far more than the tolerance, and
    the fast path's second order is the reference's second order (not a first-order stand-in)."""
    model = learner(5)
    batch = filled_bank(seed=5).sample_tasks(2, 3, 2, 3, torch.Generator().manual_seed(5))
    runs = {}
    for order in (True, False):
        cfg = ReplayConfig(meta_batch=2, ways=3, shots=2, queries=3, inner_steps=2, inner_lr=0.3, second_order=order)
        runs[order] = maml_meta_batch_fast(model, batch, CIFAR100_NORM, cfg)[0]
    gap = max((runs[True][n] - runs[False][n]).abs().max().item() for n in runs[True])
    assert gap > 1e-4
    # a conv layer upstream of BatchNorm: where a vmapped native affine batch_norm goes wrong
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=2, queries=3, inner_steps=2, inner_lr=0.3)
    want = maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg)[0]["features.0.weight"]
    torch.testing.assert_close(runs[True]["features.0.weight"], want, rtol=1e-10, atol=1e-12)


def test_frozen_parameters_get_no_gradient_in_both_paths():
    model = learner(6)
    model.classifier.bias.requires_grad_(False)
    batch = filled_bank(seed=6).sample_tasks(2, 3, 1, 2, torch.Generator().manual_seed(6))
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2, inner_steps=2, inner_lr=0.2)
    fast = maml_meta_batch_fast(model, batch, CIFAR100_NORM, cfg)
    assert "classifier.bias" not in fast[0]
    assert_same(fast, maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg))


def test_replay_template_keeps_names_and_values():
    model = learner(7)
    template = replay_template(model)
    assert [n for n, _ in template.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in template.modules())
    x = torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}
    torch.testing.assert_close(functional_call(template, params, (x,)), functional_call(model, params, (x,)),
                               rtol=1e-12, atol=1e-12)


def test_pure_function_takes_plain_tensors():
    """meta_batch_loss_and_grads is a function of (params, tensors): the same numbers as the wrapper."""
    model = learner(8)
    batch = filled_bank(seed=8).sample_tasks(2, 3, 1, 2, torch.Generator().manual_seed(8))
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2, inner_steps=1, inner_lr=0.2)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = meta_batch_loss_and_grads(replay_template(model), params, CIFAR100_NORM.unit(batch.support),
                                    batch.support_labels, CIFAR100_NORM.unit(batch.query), batch.query_labels,
                                    cfg.inner_steps, cfg.inner_lr, cfg.second_order)
    assert_same(out, maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg))


@pytest.mark.parametrize("second_order", [True, False])
def test_replay_with_the_fast_meta_batch_equals_the_reference_replay(second_order):
    # SGD, not Adam: the conv biases before a BatchNorm have a zero meta-gradient up to rounding
    # (~1e-17, different in the two paths), which Adam's normalisation would blow up to lr-sized steps
    cfg = ReplayConfig(meta_batch=3, ways=3, shots=1, queries=2, inner_steps=2, inner_lr=0.1, outer_lr=0.5,
                       second_order=second_order, patience=2, max_meta_batches=6)
    results = []
    for fn in (None, maml_meta_batch_fast):
        model = learner(9)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.outer_lr)
        kwargs = {} if fn is None else {"meta_batch_fn": fn}
        stats = replay(model, opt, filled_bank(seed=9), CIFAR100_NORM, cfg, torch.Generator().manual_seed(9), **kwargs)
        results.append((model, stats))
    (ref_model, ref_stats), (fast_model, fast_stats) = results
    assert ref_stats["meta_batches"] >= 3
    assert fast_stats["meta_batches"] == ref_stats["meta_batches"]
    assert fast_stats["stopped"] == ref_stats["stopped"]
    assert fast_stats["accuracies"] == ref_stats["accuracies"]
    assert fast_stats["best_accuracy"] == ref_stats["best_accuracy"]
    assert fast_stats["last_accuracy"] == ref_stats["last_accuracy"]
    assert fast_stats["mean_outer_loss"] == pytest.approx(ref_stats["mean_outer_loss"], rel=1e-12)
    fast_params = dict(fast_model.named_parameters())
    for n, p in ref_model.named_parameters():
        torch.testing.assert_close(fast_params[n].detach(), p.detach(), rtol=1e-10, atol=1e-12, msg=n)
    start = dict(learner(9).named_parameters())
    assert max((p.detach() - start[n].detach()).abs().max().item() for n, p in fast_params.items()) > 1e-3


def test_fast_meta_batch_runs_in_float32():
    model = learner(10, torch.float32)
    batch = filled_bank(seed=10, dtype=torch.float32).sample_tasks(2, 3, 1, 2, torch.Generator().manual_seed(10))
    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2, inner_steps=2, inner_lr=0.1)
    grads, loss, acc = maml_meta_batch_fast(model, batch, CIFAR100_NORM, cfg)
    want, want_loss, want_acc = maml_meta_batch_reference(model, batch, CIFAR100_NORM, cfg)
    assert loss.dtype == torch.float32 and acc.dtype == torch.float64
    for n in want:
        torch.testing.assert_close(grads[n], want[n], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)


def _threaded_if_several() -> set[str]:
    """bench_replay times the threaded meta-batch (the engine's replay there) on a CPU with more than one thread."""
    return {"threads"} if torch.get_num_threads() > 1 else set()


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_replay_runs(tmp_path, threads):
    from fastfree.profiling import bench_replay

    out = tmp_path / "r.json"
    with torch_threads(threads):
        assert bench_replay.main(["--tasks", "2", "--width", "4", "--image-size", "16", "--inner-steps", "1",
                                  "--queries", "2", "--repeats", "1", "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["times"]) == {"fast", "fast_chunk1", "reference"} | ({"threads"} if threads > 1 else set())
    assert r["speedup_fast_over_reference"] > 0 and ("speedup_threads_over_reference" in r) == (threads > 1)
    assert r["device_name"] and r["torch"] and r["errors"] == {}


def test_bench_replay_keeps_the_other_variants_when_one_fails(tmp_path, monkeypatch):
    """A variant that raises (as a first CUDA-graph capture on a new GPU might) is recorded as an
    error; the variants timed before and after it are kept, on disk after each one."""
    from fastfree.profiling import bench_replay

    def broken(*args, **kwargs):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(bench_replay, "maml_meta_batch_reference", broken)
    out = tmp_path / "r.json"
    assert bench_replay.main(["--tasks", "2", "--width", "4", "--image-size", "16", "--inner-steps", "1",
                              "--queries", "2", "--repeats", "1", "--device", "cpu", "--json", str(out)]) == 1
    r = json.loads(out.read_text())
    assert set(r["times"]) == {"fast", "fast_chunk1"} | _threaded_if_several()
    assert "capture failed" in r["errors"]["reference"]


def test_graphed_meta_batch_refuses_cpu_tensors_with_the_fix():
    from fastfree.engine.replay import GraphedMetaBatch
    from fastfree.errors import FastFreeError

    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2, inner_steps=1)
    batch = filled_bank().sample_tasks(2, 3, 1, 2, torch.Generator().manual_seed(0))
    with pytest.raises(FastFreeError, match="--no-cuda-graphs"):
        GraphedMetaBatch()(learner(), batch, CIFAR100_NORM, cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("second_order", [True, False])
def test_graphed_replay_equals_eager_replay_on_cuda(second_order):
    """Whole replay calls (patience loop, SGD steps between meta-batches) in float64 on CUDA: the
    graphed meta-batch (>= 3 replays) gives the eager vmapped path's run."""
    from fastfree.engine.replay import GraphedMetaBatch

    cuda = torch.device("cuda")
    cfg = ReplayConfig(meta_batch=3, ways=3, shots=1, queries=2, inner_steps=2, inner_lr=0.1, outer_lr=0.5,
                       second_order=second_order, patience=2, max_meta_batches=6)
    graphed = GraphedMetaBatch()
    results = []
    for fn in (maml_meta_batch_fast, graphed):
        model = learner(9).to(cuda)
        bank = filled_bank(seed=9)
        bank_cuda = MemoryBank(capacity_per_class=8, image_shape=(3, SIZE, SIZE), device=cuda, dtype=torch.float64)
        bank_cuda.load_state_dict(bank.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=cfg.outer_lr)
        stats = replay(model, opt, bank_cuda, CIFAR100_NORM, cfg, torch.Generator().manual_seed(9), meta_batch_fn=fn)
        results.append((model, stats))
    (eager, eager_stats), (graph_model, graph_stats) = results
    assert graphed.replays >= 3 and graph_stats["meta_batches"] == eager_stats["meta_batches"]
    assert graph_stats["accuracies"] == eager_stats["accuracies"]
    got = dict(graph_model.named_parameters())
    for n, p in eager.named_parameters():
        torch.testing.assert_close(got[n], p, rtol=1e-9, atol=1e-12, msg=n)


def test_graphed_meta_batch_falls_back_to_eager_when_capture_fails(monkeypatch):
    """A capture error (simulated: CPU tensors pass the device check, capture raises) warns once and gives
    the eager values; a FastFreeError (bad input) is not swallowed (the test above)."""
    from fastfree.engine.replay import GraphedMetaBatch

    cfg = ReplayConfig(meta_batch=2, ways=3, shots=1, queries=2, inner_steps=1)
    batch = filled_bank().sample_tasks(2, 3, 1, 2, torch.Generator().manual_seed(0))
    graphed = GraphedMetaBatch()

    def capture_fails(flat, spec):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed._graphed, "_capture", capture_fails)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    model = learner()
    with pytest.warns(RuntimeWarning, match="capture of the replay meta-batch failed"):
        got = graphed(model, batch, CIFAR100_NORM, cfg)
    assert "stream is capturing" in graphed.fallback
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eager from now on, no second warning
        again = graphed(model, batch, CIFAR100_NORM, cfg)
    assert_same(got, maml_meta_batch_fast(model, batch, CIFAR100_NORM, cfg))
    assert_same(again, got)
