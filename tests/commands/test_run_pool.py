"""A run's own pool: pretrained into the run directory once, loaded from there after; each domain
of a multi-domain run draws its teachers from the preset's seed + its index."""

import re
import signal
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import fastfree.commands.run_pool as run_pool
from fastfree.commands.run_pool import pool_in_run_dir
from fastfree.commands.train_domains import domain_pools
from fastfree.config import get_preset
from fastfree.data.domains import combine_domains
from fastfree.errors import FastFreeError
from fastfree.graceful_stop import StoppedBySignal, StopRequest
from fastfree.pool.pretrain import PretrainConfig
from fastfree.pool.progress import PretrainProgress
from fastfree.pool.teachers import sample_teacher_specs

CFG = PretrainConfig(teachers=2, ways=3, epochs=1, batch_size=16, width=4, seed=5)


def test_pretrained_once_then_loaded(tiny_dataset, tmp_path, monkeypatch, capsys):
    pool = pool_in_run_dir(tmp_path / "pool", tiny_dataset, CFG, torch.float32, "no --pool given")
    assert "no --pool given: pretraining 2 teachers" in capsys.readouterr().out
    specs = sample_teacher_specs(tiny_dataset.train.classes, 2, 3, 5, CFG.archs)
    assert [r.classes for r in pool.records] == [s.classes for s in specs] and pool.dataset == "tiny"

    def refuse(*a, **k):
        raise AssertionError("an existing pool must not be trained again")

    monkeypatch.setattr(run_pool, "pretrain_pool", refuse)
    again = pool_in_run_dir(tmp_path / "pool", tiny_dataset, CFG, torch.float32, "no --pool given")
    assert [r.classes for r in again.records] == [r.classes for r in pool.records]


def test_each_domain_draws_from_the_seed_plus_its_index(tiny_dataset, small_dataset, tmp_path):
    preset = replace(get_preset("demo-multidomain"), pretrain=CFG)
    data = combine_domains([tiny_dataset, small_dataset])
    pools = domain_pools(SimpleNamespace(pool=None), preset, data, tmp_path, torch.float32)
    for i, (pool, dataset) in enumerate(zip(pools, data.domains)):
        specs = sample_teacher_specs(dataset.train.classes, 2, 3, CFG.seed + i, CFG.archs)
        assert [r.classes for r in pool.records] == [s.classes for s in specs], i
        assert (tmp_path / f"pool-{i}-{data.labels[i]}" / "manifest.json").is_file()


def test_an_interrupted_pretraining_continues_from_its_finished_teachers(tiny_dataset, tmp_path, monkeypatch, capsys):
    """train without --pool lost its whole pool pretraining to an interrupt (hours for the paper's pool):
    finished teachers are kept as `fastfree pretrain` keeps them, and the same call continues from them."""
    cfg = replace(CFG, teachers=3, group_size=1)  # one teacher per group: saved before the interrupt
    straight = pool_in_run_dir(tmp_path / "a", tiny_dataset, cfg, torch.float32, "no --pool given")
    real = run_pool.pretrain_pool

    def interrupted(*args, on_trained, **kwargs):
        def save_then_stop(trained):
            on_trained(trained)
            raise KeyboardInterrupt

        return real(*args, on_trained=save_then_stop, **kwargs)

    monkeypatch.setattr(run_pool, "pretrain_pool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool_in_run_dir(tmp_path / "b", tiny_dataset, cfg, torch.float32, "no --pool given")
    # one kept, or two where teachers trained side by side (engine threads) finished together
    saved = len(list((tmp_path / "b" / ".progress").glob("teacher*.safetensors")))
    assert 1 <= saved < 3
    trained_again = []

    def counting(*args, done, **kwargs):
        trained_again.append(len(done))
        return real(*args, done=done, **kwargs)

    monkeypatch.setattr(run_pool, "pretrain_pool", counting)
    resumed = pool_in_run_dir(tmp_path / "b", tiny_dataset, cfg, torch.float32, "no --pool given")
    assert trained_again == [saved] and f"continued: {saved} already trained" in capsys.readouterr().out
    assert not (tmp_path / "b" / ".progress").exists()
    for x, y in zip(straight.state_dicts, resumed.state_dicts):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_an_interrupted_pretraining_with_other_settings_is_refused_in_trains_words(tiny_dataset, tmp_path):
    """The refusal was worded for `pretrain --resume`, a flag the user of `train` never passed."""
    cfg = replace(CFG, teachers=2, group_size=1)
    PretrainProgress(tmp_path / "pool", {"other": "settings"}).start()
    with pytest.raises(FastFreeError) as e:
        pool_in_run_dir(tmp_path / "pool", tiny_dataset, cfg, torch.float32, "no --pool given")
    assert str(e.value).startswith("no --pool given, its pool's pretraining: ") and "--resume" not in str(e.value)
    assert "was started with other settings" in str(e.value) and "to start over" in str(e.value)


def _signals(request: StopRequest):
    """Stands in for stop_on_signals: checks what the stop is said to wait for and yields `request`, which
    the test sets where the first signal's handler would."""
    @contextmanager
    def signals(stopping_after):
        assert stopping_after == "the epoch under way, with the teachers' state saved there"
        yield request
    return signals


@pytest.mark.parametrize("when", ["mid-way", "at the last teacher"])
def test_a_stop_asked_for_in_the_runs_own_pretraining_keeps_its_teachers(tiny_dataset, tmp_path, monkeypatch, when):
    """Ctrl-C or SIGTERM while train pretrains its own pool: the teachers under way (in their last epoch,
    of one) finish and are saved, and the run (which has no checkpoint yet) is continued by the same
    command, not by --resume. The request is set by hand where the first signal's handler would set it
    (tests/test_graceful_stop.py)."""
    cfg = replace(CFG, teachers=3)
    straight = pool_in_run_dir(tmp_path / "a", tiny_dataset, cfg, torch.float32, "no --pool given")
    request = StopRequest()
    signals = _signals(request)
    real = run_pool.pretrain_pool

    def asked(*args, on_trained, **kwargs):
        def save(trained):
            on_trained(trained)
            saved = len(list((tmp_path / "b" / ".progress").glob("teacher*.safetensors")))
            if when == "mid-way" or saved == cfg.teachers:
                request.signum = signal.SIGTERM

        return real(*args, on_trained=save, **kwargs)

    monkeypatch.setattr(run_pool, "stop_on_signals", signals)
    monkeypatch.setattr(run_pool, "pretrain_pool", asked)
    with pytest.raises(StoppedBySignal) as stopped:
        pool_in_run_dir(tmp_path / "b", tiny_dataset, cfg, torch.float32, "no --pool given")
    assert stopped.value.exit_code == 143 and stopped.value.then.startswith("run the same command to continue (")
    if when == "mid-way":  # one saved, or two where teachers trained side by side (engine threads)
        assert re.fullmatch(r"stopped by SIGTERM with [12] of 3 teachers trained, each saved", str(stopped.value))
        assert not (tmp_path / "b" / "manifest.json").exists()
    else:
        assert str(stopped.value) == f"stopped by SIGTERM with its pool of 3 teachers complete in {tmp_path / 'b'}"
        assert (tmp_path / "b" / "manifest.json").is_file()
    monkeypatch.setattr(run_pool, "pretrain_pool", real)
    request.signum = None
    again = pool_in_run_dir(tmp_path / "b", tiny_dataset, cfg, torch.float32, "no --pool given")
    for x, y in zip(straight.state_dicts, again.state_dicts, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_a_stop_in_the_runs_own_batched_pretraining_keeps_the_group_and_the_same_command_continues(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    """On a GPU the run's own pool trains batched, as one group: a stop keeps the group's state at the
    epoch's end and the same command continues it (not --resume: the run has no checkpoint yet)."""
    cfg = replace(CFG, teachers=3, epochs=3)
    monkeypatch.setattr(run_pool, "resolve_pool_engine", lambda engine, device: "batched")
    straight = pool_in_run_dir(tmp_path / "a", tiny_dataset, cfg, torch.float32, "no --pool given")
    request = StopRequest()
    signals = _signals(request)
    real = run_pool.pretrain_pool

    def asked(*args, **kwargs):  # the signal comes in the first step: the group pauses after its first epoch
        return real(*args, progress=lambda k: setattr(request, "signum", signal.SIGTERM), **kwargs)

    monkeypatch.setattr(run_pool, "stop_on_signals", signals)
    monkeypatch.setattr(run_pool, "pretrain_pool", asked)
    with pytest.raises(StoppedBySignal) as stopped:
        pool_in_run_dir(tmp_path / "b", tiny_dataset, cfg, torch.float32, "no --pool given")
    assert str(stopped.value) == "stopped by SIGTERM with 0 of 3 teachers trained, and the 3 under way saved after " \
                                 "epoch 1 of 3"
    assert stopped.value.then.startswith("run the same command to continue (")
    handed = []  # a group trained again from its start would give the same pool: check that the state is used

    def recorded(*args, paused, **kwargs):
        handed.append(paused)
        return real(*args, paused=paused, **kwargs)

    monkeypatch.setattr(run_pool, "pretrain_pool", recorded)
    request.signum = None
    capsys.readouterr()
    again = pool_in_run_dir(tmp_path / "b", tiny_dataset, cfg, torch.float32, "no --pool given")
    assert "continued: 0 already trained, 3 more from epoch 2 of 3" in capsys.readouterr().out
    assert [[(p.indices, p.epochs_done) for p in states] for states in handed] == [[((0, 1, 2), 1)]]
    for x, y in zip(straight.state_dicts, again.state_dicts, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
