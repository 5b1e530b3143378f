"""Algorithm 3's loop: an interrupted-and-resumed run ends exactly where an uninterrupted one does."""

import json

import pytest
import torch

from fastfree.errors import FastFreeError
from fastfree.free.bell import BellConfig
from fastfree.free.config import FreeConfig
from fastfree.free.five import FiveConfig
from fastfree.free.kept import read_kept
from fastfree.free.replay import ReplayConfig
from fastfree.free.run import CHECKPOINT, METRICS, RunContext, train_free
from fastfree.metatest.protocol import MetaTestConfig
from fastfree.models import Conv4

CFG = FreeConfig(
    iterations=5, warmup=1, teachers_per_iteration=2, ngf=4, latent_dim=8, learner_width=4,
    eval_every=2, val_tasks=2, checkpoint_every=2, grid_every=3, memory_per_class=6,
    five=FiveConfig(k=2, images_per_class=4),
    replay=ReplayConfig(meta_batch=2, shots=1, queries=2, inner_steps=1, patience=1, max_meta_batches=2),
)


def _ctx(run_dir, dataset, device="cpu"):
    torch.manual_seed(0)
    teachers = [Conv4(5, 4, 32).eval().requires_grad_(False) for _ in range(3)]
    classes = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (0, 2, 4, 6, 8)]
    val = MetaTestConfig(tasks=2, shots=(1,), queries=2, steps=1, engine="reference")
    teachers = [t.to(device) for t in teachers]
    return RunContext(run_dir, CFG, dataset, teachers, classes, val, torch.device(device))


def _params(state):
    return {**{f"g.{k}": v for k, v in state.generator.state_dict().items()},
            **{f"l.{k}": v for k, v in state.learner.state_dict().items()}}


def test_resume_gives_the_same_final_parameters(tiny_dataset, tmp_path):
    straight = train_free(_ctx(tmp_path / "a", tiny_dataset), resume=False)
    (tmp_path / "b").mkdir()
    first = train_free(_ctx(tmp_path / "b", tiny_dataset), resume=False, stop_after=3)  # "killed" after 3
    assert first.iteration == 3
    ran = []  # a resume that started again from iteration 0 would end with equal parameters too
    resumed = train_free(_ctx(tmp_path / "b", tiny_dataset), resume=True, progress=ran.append)
    assert [m["iteration"] for m in ran] == [3, 4]
    assert resumed.iteration == straight.iteration == 5
    a, b = _params(straight), _params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(straight.bank) == len(resumed.bank) > 0
    assert resumed.recovery_seconds > 0 and resumed.best == straight.best
    lines = [json.loads(x) for x in (tmp_path / "b" / METRICS).read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [0, 1, 2, 3, 4]
    assert lines[0]["warmup"] and not lines[1]["warmup"]
    assert "replay" in lines[1] and "alignment" in lines[1] and "val" in lines[1]
    assert (tmp_path / "b" / "grids" / "iter_00003.png").is_file()
    # the learner of every meta-val evaluation (iterations 2, 4 and the last), equal to the straight run's
    kept_a, kept_b = read_kept(tmp_path / "a"), read_kept(tmp_path / "b")
    assert [k.iteration for k in kept_b] == [k.iteration for k in kept_a] == [2, 4, 5]
    assert all(torch.equal(x.learner[n], y.learner[n]) for x, y in zip(kept_a, kept_b) for n in x.learner)


def test_a_resume_from_a_checkpoint_older_than_the_kill_redoes_the_iterations_after_it(tiny_dataset, tmp_path):
    """Killed after iteration 4 was evaluated and kept but before a later checkpoint could be written:
    the run continues from its last checkpoint (2), and the metrics, kept learner and meta-val pick of
    iterations 3-4 are done again, not kept twice or left from the first attempt."""
    import shutil

    from fastfree.free.selection import BEST

    straight = train_free(_ctx(tmp_path / "a", tiny_dataset), resume=False)
    run = tmp_path / "b"
    train_free(_ctx(run, tiny_dataset), resume=False, stop_after=2)  # checkpoint_every 2: written at 2
    shutil.copy(run / CHECKPOINT, tmp_path / "at2.pt")
    train_free(_ctx(run, tiny_dataset), resume=True, stop_after=4)  # evaluates and keeps 4
    assert [k.iteration for k in read_kept(run)] == [2, 4]
    shutil.copy(tmp_path / "at2.pt", run / CHECKPOINT)  # what a kill during iteration 5 leaves
    ran = []
    resumed = train_free(_ctx(run, tiny_dataset), resume=True, progress=ran.append)
    assert [m["iteration"] for m in ran] == [2, 3, 4]
    assert [json.loads(x)["iteration"] for x in (run / METRICS).read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert [k.iteration for k in read_kept(run)] == [2, 4, 5]
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.best == straight.best
    picks = torch.load(run / BEST, weights_only=True)["shots"]
    want = torch.load(tmp_path / "a" / BEST, weights_only=True)["shots"]
    assert {k: v["iteration"] for k, v in picks.items()} == {k: v["iteration"] for k, v in want.items()}
    assert all(torch.equal(picks[k]["learner"][n], want[k]["learner"][n]) for k in want for n in want[k]["learner"])


def test_a_stop_asked_for_mid_iteration_checkpoints_that_iteration_and_the_resume_ends_as_a_straight_run(
        tiny_dataset, tmp_path):
    """What a Ctrl-C or SIGTERM does under fastfree.graceful_stop: asked for during iteration 3 (the
    request is set when iteration 2 is reported, before 3 starts), the run finishes 3, checkpoints it
    although checkpoint_every is 2, and raises; a resume continues from 3 and ends as a straight run."""
    import signal

    from fastfree.graceful_stop import StoppedBySignal, StopRequest

    straight = train_free(_ctx(tmp_path / "a", tiny_dataset), resume=False)
    run, stop, seen = tmp_path / "b", StopRequest(), []

    def progress(m):
        seen.append(m["iteration"])
        if m["iteration"] == 1:  # iteration 2 (1-based) reported: the signal comes during iteration 3
            stop.signum = signal.SIGTERM

    with pytest.raises(StoppedBySignal) as stopped:
        train_free(_ctx(run, tiny_dataset), resume=False, progress=progress, stop=stop)
    assert (stopped.value.completed, stopped.value.total, stopped.value.signum) == (3, 5, signal.SIGTERM)
    assert seen == [0, 1, 2]  # the stopping iteration is still reported
    assert torch.load(run / CHECKPOINT, weights_only=True)["iteration"] == 3
    assert [json.loads(x)["iteration"] for x in (run / METRICS).read_text().splitlines()] == [0, 1, 2]
    ran = []
    resumed = train_free(_ctx(run, tiny_dataset), resume=True, progress=ran.append)
    assert [m["iteration"] for m in ran] == [3, 4]  # nothing redone
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.best == straight.best


@pytest.mark.gpu
def test_resume_on_cuda(tiny_dataset, tmp_path):
    """The checkpoint's RNG states are CPU generators' and must be restored from the CPU (read onto
    the GPU, every resume on CUDA stopped with "RNG state must be a torch.ByteTensor"). Parameters
    are compared with a tolerance: CUDA kernels (cuDNN's convolution backward) need not be
    deterministic, which is not what this test is about; the RNG streams must be equal exactly."""
    straight = train_free(_ctx(tmp_path / "a", tiny_dataset, "cuda"), resume=False)
    (tmp_path / "b").mkdir()
    train_free(_ctx(tmp_path / "b", tiny_dataset, "cuda"), resume=False, stop_after=3)
    resumed = train_free(_ctx(tmp_path / "b", tiny_dataset, "cuda"), resume=True)
    assert resumed.iteration == straight.iteration == 5
    assert all(torch.equal(straight.rngs[k].get_state(), resumed.rngs[k].get_state()) for k in straight.rngs)
    assert len(straight.bank) == len(resumed.bank) > 0
    a, b = _params(straight), _params(resumed)
    assert all(v.is_cuda for v in b.values())
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-3, rtol=1e-3, msg=k)


def test_a_metrics_line_torn_by_a_kill_does_not_stop_the_resume(tiny_dataset, tmp_path):
    train_free(_ctx(tmp_path / "b", tiny_dataset), resume=False, stop_after=3)
    with open(tmp_path / "b" / METRICS, "a") as f:
        f.write('{"iteration": 3, "five_lo')  # the disk filled up mid-line
    train_free(_ctx(tmp_path / "b", tiny_dataset), resume=True)
    lines = [json.loads(x) for x in (tmp_path / "b" / METRICS).read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [0, 1, 2, 3, 4]


def test_a_finished_run_lengthened_on_resume_ends_where_the_longer_run_does(tiny_dataset, tmp_path):
    """--resume with a larger --iterations: a 4-iteration run continued to 6 equals a 6-iteration run
    (its old end, 4, was an evaluation point anyway); fewer iterations than are done is refused."""
    from dataclasses import replace

    def ctx(run_dir, iterations):
        return replace(_ctx(run_dir, tiny_dataset), cfg=replace(CFG, iterations=iterations))

    straight = train_free(ctx(tmp_path / "a", 6), resume=False)
    (tmp_path / "b").mkdir()
    assert train_free(ctx(tmp_path / "b", 4), resume=False).iteration == 4
    longer = train_free(ctx(tmp_path / "b", 6), resume=True)
    assert longer.iteration == 6 and longer.best == straight.best
    a, b = _params(straight), _params(longer)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [k.iteration for k in read_kept(tmp_path / "b")] == [k.iteration for k in read_kept(tmp_path / "a")] \
        == [2, 4, 6]
    with pytest.raises(FastFreeError, match="has completed 6 iterations, more than --iterations 5; pass "
                                            "--iterations 6 or more"):
        train_free(ctx(tmp_path / "b", 5), resume=True)


def test_a_fresh_start_drops_what_an_attempt_that_never_checkpointed_left(tiny_dataset, tmp_path):
    """Killed after its first evaluation but before any checkpoint (checkpoint_every 4 here): a new run
    in that directory must not report the old attempt's kept learners or meta-val picks as its own."""
    from dataclasses import replace

    from fastfree.free.selection import BEST

    run = tmp_path / "f"
    run.mkdir()
    ctx = _ctx(run, tiny_dataset)
    ctx = replace(ctx, cfg=replace(CFG, checkpoint_every=4))
    train_free(ctx, resume=False, stop_after=3)  # evaluated at 2; checkpointed at 3 (stop_after's end)
    (run / CHECKPOINT).unlink()  # as if killed before that checkpoint
    assert (run / BEST).is_file() and [k.iteration for k in read_kept(run)] == [2]
    train_free(replace(ctx, cfg=replace(CFG, checkpoint_every=4, eval_every=3)), resume=False, stop_after=2)
    assert not (run / BEST).exists() and not any((run / "learners").glob("iter_*.pt"))


def test_training_changes_the_learner_and_fills_the_bank(tiny_dataset, tmp_path):
    from fastfree.free.trainer import init_state

    before = init_state(CFG, 32, 5, torch.device("cpu"))
    after = train_free(_ctx(tmp_path / "c", tiny_dataset), resume=False)
    changed = [k for k, v in before.learner.state_dict().items() if not torch.equal(v, after.learner.state_dict()[k])]
    assert changed and after.bank.classes()
    assert set(after.bank.classes()) <= set(range(10))


def test_resume_and_overwrite_errors(tiny_dataset, tmp_path):
    with pytest.raises(FastFreeError, match="no checkpoint.pt"):
        train_free(_ctx(tmp_path / "d", tiny_dataset), resume=True)
    (tmp_path / "e").mkdir()
    train_free(_ctx(tmp_path / "e", tiny_dataset), resume=False, stop_after=1)
    assert (tmp_path / "e" / CHECKPOINT).is_file()
    with pytest.raises(FastFreeError, match="pass --resume"):
        train_free(_ctx(tmp_path / "e", tiny_dataset), resume=False)


def test_bad_free_config():
    with pytest.raises(FastFreeError, match=r"warmup=5 \(need .*: pass --warmup below --iterations"):
        FreeConfig(iterations=5, warmup=5)
    with pytest.raises(FastFreeError, match=r"shots \+ queries = 21 .* memory_per_class=20 "
                                            r"\(lower --shots, or raise --memory-per-class\)"):
        FreeConfig(memory_per_class=20, replay=ReplayConfig(shots=6))  # stops at the start, not at the first replay
    # options that would do nothing are refused rather than recorded as if they had acted
    with pytest.raises(FastFreeError, match="drop --generator-optimizer"):
        FreeConfig(generator="sequential", generator_optimizer="fresh")
    with pytest.raises(FastFreeError, match="drop --bell-augment"):
        FreeConfig(bell=BellConfig(mode="none", augment=True))
    with pytest.raises(FastFreeError, match="would never change"):
        FreeConfig(bell=BellConfig(mode="none"), replay_enabled=False)
    with pytest.raises(FastFreeError, match=r"--bell-outer, --bell-inner set BELL's update, which --learner-update "
                                            r"erm does not run"):
        FreeConfig(bell=BellConfig(mode="erm", outer="adam", inner_optimizer="sgd", targets="hard"))
    with pytest.raises(FastFreeError, match=r"--targets set"):
        FreeConfig(bell=BellConfig(mode="none", targets="hard"))
    with pytest.raises(FastFreeError, match="drop --replay-first-order"):
        FreeConfig(replay_enabled=False, replay=ReplayConfig(second_order=False))
    # replay's outer step is the meta-learner's one Adam (built with learner_lr): a second rate would be ignored
    with pytest.raises(FastFreeError, match=r"replay.outer_lr=0.01 differs from learner_lr=0.001"):
        FreeConfig(replay=ReplayConfig(outer_lr=0.01))


def test_table5_baseline_switches_run(tiny_dataset, tmp_path):
    """Sequential generator + replay only: the generator never takes a meta-step, BELL never runs."""
    from dataclasses import replace

    from fastfree.free.bell import BellConfig

    cfg = replace(CFG, iterations=3, generator="sequential", bell=BellConfig(mode="none"))
    ctx = _ctx(tmp_path / "f", tiny_dataset)
    ctx.cfg = cfg
    state = train_free(ctx, resume=False)
    assert state.generator_opt.state == {}  # no meta-gradient step was taken
    lines = [json.loads(x) for x in (tmp_path / "f" / METRICS).read_text().splitlines()]
    assert all("bell_losses" not in m for m in lines) and "replay" in lines[-1]
    no_replay = replace(CFG, iterations=2, replay_enabled=False)
    ctx = _ctx(tmp_path / "g", tiny_dataset)
    ctx.cfg = no_replay
    train_free(ctx, resume=False)
    assert all("replay" not in json.loads(x) for x in (tmp_path / "g" / METRICS).read_text().splitlines())


def test_meta_val_log_is_the_curve_the_selection_read(tiny_dataset, tmp_path):
    from fastfree.free.run import meta_val_log, results_markdown
    from fastfree.free.selection import BEST, read_selected

    train_free(_ctx(tmp_path, tiny_dataset), resume=False)
    log = meta_val_log(tmp_path)
    assert [e["iteration"] for e in log] == [k.iteration for k in read_kept(tmp_path)] == [2, 4, 5]
    for shots, pick in read_selected(tmp_path / BEST).items():
        curve = {e["iteration"]: e["val"][str(shots)]["mean"] for e in log}
        assert curve[pick.iteration] == pytest.approx(pick.val) and pick.val == pytest.approx(max(curve.values()))
    summary = {"results": {}, "meta_val": log, "warmup": 1, "iterations": 5,
               "data_recovery_seconds": 1.0, "data_recovery_gpu_hours": 1 / 3600}
    table = results_markdown(summary, "cpu", (1, 5), 5)
    first = log[0]["val"]["1"]
    assert f"| 2 | {first['mean']:.2f} +- {first['ci95']:.2f} | - |" in table  # 5-shot: not measured
    assert "Meta-val" not in results_markdown({**summary, "meta_val": []}, "cpu", (1,), 5)


def test_a_pick_that_is_the_last_learner_is_meta_tested_once(tiny_dataset, tmp_path, monkeypatch):
    """The final meta-test: a shot count whose meta-val pick is the last learner (same weights) reports
    the last's cells instead of adapting the same weights on the same tasks again; another pick is
    measured. Checked against measuring everything."""
    from fastfree.free import run as run_module
    from fastfree.free.run import final_results
    from fastfree.free.selection import BEST, write_selected
    from fastfree.metatest.initializations import random_init

    state = train_free(_ctx(tmp_path / "r", tiny_dataset), resume=False)
    ctx = _ctx(tmp_path / "r", tiny_dataset)
    test = MetaTestConfig(tasks=3, shots=(1, 2), queries=2, steps=1, engine="reference")
    earlier = read_kept(tmp_path / "r")[0]
    write_selected(tmp_path / "r" / BEST, state.learner.state_dict(), {"1": {"iteration": 5, "val": 50.0}})
    write_selected(tmp_path / "r" / BEST, earlier.learner, {"2": {"iteration": earlier.iteration, "val": 50.0}})
    measured, real = [], run_module.metatest_data
    monkeypatch.setattr(run_module, "metatest_data", lambda init, data, split, config: measured.append(
        config.shots) or real(init, data, split, config))
    summary = final_results(ctx, state, test, lambda: random_init(lambda: Conv4(5, 4, 32), 0))
    assert measured == [(1, 2), (2,), (1, 2)]  # last, the 2-shot pick only, Random
    label = next(k for k in summary["results"] if k.startswith("FREE (selected"))
    assert list(summary["results"]) == [label, "FREE (last)", "Random"]
    assert summary["results"][label]["1"] == summary["results"]["FREE (last)"]["1"]
    # what measuring the 1-shot pick again would have given
    monkeypatch.setattr(run_module, "_same_weights", lambda a, b: False)
    everything = final_results(ctx, state, test, lambda: random_init(lambda: Conv4(5, 4, 32), 0))
    assert everything["results"] == summary["results"] and everything["per_task"] == summary["per_task"]
    assert measured[3:] == [(1, 2), (1, 2), (1, 2)]


def test_merged_shots_take_each_cell_from_its_own_measurement_also_per_domain():
    """final_results' merge for a multi-domain run where the 1-shot pick is the last learner and the
    5-shot pick was measured: overall and per-domain cells both come from the right measurement."""
    from fastfree.free.run import _merge_shots
    from fastfree.metatest.protocol import ShotResult

    def r(shots, mean):
        return ShotResult(shots, mean, 1.0, 2, [mean, mean])

    last = ([r(1, 10.0), r(5, 20.0)], {"a": [r(1, 11.0), r(5, 21.0)], "b": [r(1, 12.0), r(5, 22.0)]})
    own = ([r(5, 30.0)], {"a": [r(5, 31.0)], "b": [r(5, 32.0)]})
    overall, domains = _merge_shots(own, last, (1, 5))
    assert [x.mean for x in overall] == [10.0, 30.0]
    assert {d: [x.mean for x in rs] for d, rs in domains.items()} == {"a": [11.0, 31.0], "b": [12.0, 32.0]}
    nothing_measured = _merge_shots(([], None), last, (1,))
    assert [x.mean for x in nothing_measured[0]] == [10.0] and nothing_measured[1]["b"][0].mean == 12.0
    assert _merge_shots(([r(5, 30.0)], None), ([r(1, 10.0), r(5, 20.0)], None), (1, 5))[1] is None


def test_a_grid_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A kill while a grid is written leaves the grid before it (as every run file), and no temporary file."""
    from PIL import Image

    from fastfree.free.five import RecoveredTask
    from fastfree.free.run import save_grid

    torch.manual_seed(0)
    task = RecoveredTask(images=torch.rand(10, 3, 8, 8), labels=torch.arange(5).repeat(2), teacher=0, eta_rate=1.0,
                         final_loss=0.0)
    path = tmp_path / "grids" / "iter_00010.png"
    save_grid([task], path)
    before = path.read_bytes()
    assert Image.open(path).size == (8 * 2 * 5, 8)  # 2 images of each of the 5 classes in one row

    def killed_mid_write(self, fp, format=None, **kw):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG")  # a few bytes, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_grid([RecoveredTask(torch.rand(10, 3, 8, 8), task.labels, 0, 1.0, 0.0)], path)
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == [path.name]
