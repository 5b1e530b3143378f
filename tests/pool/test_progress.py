"""Resumable pretraining: an interrupted or grown pool equals one trained in one go."""

import contextlib
import json
import re
import signal

import pytest
import torch
from safetensors.torch import load_file

from fastfree.cli import main
from fastfree.data.split import CIFAR100_NORM
from fastfree.errors import FastFreeError
from fastfree.graceful_stop import StoppedBySignal, StopRequest
from fastfree.pool import pretrain as pretrain_module
from fastfree.pool.pretrain import PretrainConfig, pretrain_pool, steps_per_epoch, steps_trained_before
from fastfree.pool.progress import PAUSED, PROGRESS, REPLACING, PretrainProgress, fingerprint
from fastfree.pool.store import MANIFEST, WEIGHTS, load_pool
from fastfree.pool.teachers import sample_teacher_specs
from tests.pool.test_pretrain import NOISE_ONLY

SMALL = ["--images-per-class", "25", "--device", "cpu"]


class Killed(Exception):
    """Stands in for a kill: raised inside training, after some teachers were saved."""


def _fp(cfg, engine):
    return fingerprint(cfg.to_dict(), "tiny", CIFAR100_NORM.to_dict(), 32, {"source": "tiny"}, "float32", engine)


def _equal(a, b):
    assert [t.spec for t in a] == [t.spec for t in b]
    for x, y in zip(a, b):
        assert x.heldout_accuracy == y.heldout_accuracy and x.best_epoch == y.best_epoch
        assert x.state_dict.keys() == y.state_dict.keys()
        for k in x.state_dict:
            torch.testing.assert_close(x.state_dict[k].cpu(), y.state_dict[k].cpu(), rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("engine, group_size, kill_after", [("reference", 100, 2), ("batched", 2, 1),
                                                             ("threads", 100, 2)])
def test_resumed_pool_equals_uninterrupted(tiny_split, tmp_path, monkeypatch, engine, group_size, kill_after):
    cfg = PretrainConfig(teachers=3, epochs=2, batch_size=20, group_size=group_size)
    specs = sample_teacher_specs(tiny_split.classes, 3, 5, seed=4)
    whole = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, engine)

    progress = PretrainProgress(tmp_path, _fp(cfg, engine))
    progress.start()
    calls = []

    def save_then_maybe_die(new):
        progress.save(new)
        calls.append([t.spec.index for t in new])
        if len(calls) == kill_after:
            raise Killed

    with pytest.raises(Killed):
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, engine, on_trained=save_then_maybe_die)
    (tmp_path / PROGRESS / "teacher0002.safetensors.tmp").write_bytes(b"torn")  # a kill mid-write: ignored

    done = PretrainProgress(tmp_path, _fp(cfg, engine)).resume(specs)
    assert sorted(done) == sorted(i for c in calls for i in c)
    steps, trained_again = [], []
    resumed = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, engine, progress=steps.append, done=done,
                            on_trained=lambda new: trained_again.extend(t.spec.index for t in new))
    _equal(resumed, whole)
    assert set(trained_again).isdisjoint(done) and set(trained_again) | set(done) == {0, 1, 2}
    # only the teachers trained again report steps, 2 epochs x 2 steps each (40 images, batch 20); the bar
    # starts at the others' (steps_trained_before)
    assert sum(steps) == 4 * len(trained_again)
    assert steps_trained_before(steps_per_epoch(tiny_split, specs, cfg), cfg.epochs, done, []) + sum(steps) == 12


def test_batched_growth_trains_only_the_new_teachers(tiny_split, monkeypatch):
    """The new teachers of a grown pool train in a group of their own: the old ones are kept as
    they are, and the new ones equal those of a pool trained at once up to rounding (float64)."""
    cfg = PretrainConfig(teachers=3, epochs=2, batch_size=20)
    specs = sample_teacher_specs(tiny_split.classes, 3, 5, seed=4)
    at_once = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", torch.float64)
    old = pretrain_pool(tiny_split, CIFAR100_NORM, specs[:2], cfg, "batched", torch.float64)
    groups = []
    real = pretrain_module.train_teachers_batched
    monkeypatch.setattr(pretrain_module, "train_teachers_batched",
                        lambda split, norm, chunk, *a, **k: groups.append([s.index for s in chunk]) or
                        real(split, norm, chunk, *a, **k))
    grown = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", torch.float64,
                          done={t.spec.index: t for t in old})
    assert groups == [[2]]
    _equal(grown[:2], old)
    new, ref = grown[2], at_once[2]
    assert new.heldout_accuracy == ref.heldout_accuracy and new.best_epoch == ref.best_epoch
    for k, v in ref.state_dict.items():
        atol = 1e-6 if k in NOISE_ONLY or k.endswith("running_mean") else 1e-12  # see NOISE_ONLY
        torch.testing.assert_close(new.state_dict[k], v, rtol=1e-10, atol=atol, msg=k)


def _pretrain(out, teachers, *extra, report=None):
    args = ["pretrain", "--teachers", str(teachers), "--epochs", "2", "--batch-size", "32", "--out", str(out),
            *SMALL, *extra]
    if report is not None:
        args += ["--json", str(report)]
    return main(args)


def _weights(pool):
    return load_file(str(pool / WEIGHTS))


def test_cli_grows_a_pool_to_the_one_trained_at_once(tmp_path):
    assert _pretrain(tmp_path / "three", 3) == 0
    assert _pretrain(tmp_path / "grown", 2) == 0
    report = tmp_path / "grow.json"
    assert _pretrain(tmp_path / "grown", 3, "--resume", report=report) == 0
    assert json.loads(report.read_text())["resumed_teachers"] == 2
    a, b = _weights(tmp_path / "three"), _weights(tmp_path / "grown")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_pool(tmp_path / "three").records == load_pool(tmp_path / "grown").records
    assert not (tmp_path / "grown" / PROGRESS).exists()
    manifest = json.loads((tmp_path / "grown" / MANIFEST).read_text())
    assert manifest["provenance"] == {"data": manifest["provenance"]["data"], "dtype": "float32",
                                      "engine": "reference"}
    assert manifest["provenance"]["data"]["images_per_class"] == 25 and "root" not in manifest["provenance"]["data"]


@contextlib.contextmanager
def _killed_at_teacher(n, monkeypatch):
    """The reference trainer dies when it starts its n-th teacher (a kill mid-pretraining), then is restored."""
    real = pretrain_module.train_teacher_reference
    calls = []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(pretrain_module, "train_teacher_reference", dies)
    try:
        yield
    finally:
        monkeypatch.setattr(pretrain_module, "train_teacher_reference", real)


def _refused(capsys, code, pattern):
    err = capsys.readouterr().err
    assert code == 2 and re.search(pattern, err), err


def test_cli_resumes_an_interrupted_pretraining(tmp_path, monkeypatch, capsys):
    assert _pretrain(tmp_path / "whole", 3) == 0
    with pytest.raises(Killed), _killed_at_teacher(3, monkeypatch):
        _pretrain(tmp_path / "cut", 3)
    assert not (tmp_path / "cut" / MANIFEST).exists()
    kept = sorted(p.name for p in (tmp_path / "cut" / PROGRESS).glob("teacher*"))
    # one by one, the two teachers before the kill; side by side (engine threads, auto's pick with more
    # than one torch thread) the kill also stops the teacher still training beside the first finished
    assert kept in (["teacher0000.safetensors", "teacher0001.safetensors"], ["teacher0000.safetensors"],
                    ["teacher0001.safetensors"])
    _refused(capsys, _pretrain(tmp_path / "cut", 3), "pass --resume")  # a fresh start would lose them
    _refused(capsys, main(["pretrain", "--teachers", "3", "--epochs", "3", "--batch-size", "32", "--out",
                           str(tmp_path / "cut"), "--resume", *SMALL]), r"epochs: 2 there, 3 now")
    assert _pretrain(tmp_path / "cut", 3, "--resume", report=tmp_path / "r.json") == 0
    assert json.loads((tmp_path / "r.json").read_text())["resumed_teachers"] == len(kept)  # only the rest trained
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_resume_refusals(tmp_path, capsys):
    _refused(capsys, _pretrain(tmp_path / "empty", 2, "--resume"), "neither an interrupted pretraining")
    assert _pretrain(tmp_path / "pool", 2) == 0
    _refused(capsys, _pretrain(tmp_path / "pool", 3, "--lr", "0.02", "--resume"),
             r"other settings \(pretrain.lr: 0.01 there, 0.02 now\)")
    _refused(capsys, main(["pretrain", "--teachers", "3", "--epochs", "2", "--batch-size", "32", "--out",
                           str(tmp_path / "pool"), "--resume", "--device", "cpu", "--images-per-class", "30"]),
             r"data.images_per_class: 25 there, 30 now")
    _refused(capsys, _pretrain(tmp_path / "pool", 1, "--resume"), r"would drop 1 of them: pass --teachers >= 2")
    assert len(load_pool(tmp_path / "pool")) == 2  # refused: the pool is as it was


def test_a_progress_file_of_another_teacher_is_refused(tiny_split, tmp_path):
    cfg = PretrainConfig(teachers=2, epochs=1, batch_size=20)
    specs = sample_teacher_specs(tiny_split.classes, 2, 5, seed=4)
    progress = PretrainProgress(tmp_path, _fp(cfg, "reference"))
    progress.start()
    progress.save(pretrain_pool(tiny_split, CIFAR100_NORM, specs[:1], cfg, "reference"))
    other = sample_teacher_specs(tiny_split.classes, 2, 5, seed=5)
    with pytest.raises(FastFreeError, match="holds teacher"):
        progress.resume(other)


def test_cli_keeps_a_finished_pool_unless_told_to_overwrite(tmp_path, capsys):
    pool = tmp_path / "pool"
    assert _pretrain(pool, 2) == 0
    before = _weights(pool)
    _refused(capsys, _pretrain(pool, 2, "--seed", "7"), r"already holds a pool: pass --resume .* --overwrite")
    _refused(capsys, _pretrain(pool, 2, "--resume", "--overwrite"), r"pass one of them")
    after = _weights(pool)
    assert all(torch.equal(before[k], after[k]) for k in before)  # refused: untouched
    assert not (pool / PROGRESS).exists()
    assert _pretrain(pool, 2, "--seed", "7", "--overwrite") == 0
    replaced = _weights(pool)
    assert not all(torch.equal(before[k], replaced[k]) for k in before)


def test_an_interrupted_overwrite_resumes_as_a_replacement(tmp_path, monkeypatch):
    """--overwrite killed half-way: --resume continues the new pool (the old one, still in place, is
    neither grown nor compared), and the result equals the new pool trained in one go."""
    assert _pretrain(tmp_path / "new", 2, "--seed", "7") == 0
    assert _pretrain(tmp_path / "pool", 3) == 0
    with pytest.raises(Killed), _killed_at_teacher(2, monkeypatch):
        _pretrain(tmp_path / "pool", 2, "--seed", "7", "--overwrite")
    assert len(load_pool(tmp_path / "pool")) == 3  # the old pool is still whole
    assert _pretrain(tmp_path / "pool", 2, "--seed", "7", "--resume") == 0
    a, b = _weights(tmp_path / "new"), _weights(tmp_path / "pool")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "pool" / PROGRESS).exists()


def test_an_overwrite_marks_itself_before_its_progress_exists(tmp_path, monkeypatch):
    """Killed right after the progress folder's fingerprint was written, an overwrite must already
    carry its marker, or --resume would grow the old pool instead of replacing it."""
    assert _pretrain(tmp_path / "pool", 2) == 0

    def killed(self):
        assert (self.dir / REPLACING).is_file()
        raise Killed

    monkeypatch.setattr(PretrainProgress, "_write_fingerprint", killed)
    with pytest.raises(Killed):
        _pretrain(tmp_path / "pool", 2, "--seed", "7", "--overwrite")


def test_a_pool_from_before_the_learning_rate_schedule_still_grows(tmp_path):
    """Manifests written before the schedule existed lack its settings; their teachers trained without
    milestones, which is what a 2-epoch Conv4 pool's schedule is now, so growing one is allowed."""
    from fastfree.pool.progress import LEGACY_PRETRAIN
    from fastfree.pool.store import save_pool

    assert _pretrain(tmp_path / "three", 3) == 0
    assert _pretrain(tmp_path / "old", 2) == 0
    pool = load_pool(tmp_path / "old")
    legacy = {k: v for k, v in pool.manifest["pretrain"].items() if k not in LEGACY_PRETRAIN}
    assert legacy != pool.manifest["pretrain"]
    save_pool(tmp_path / "old", pool.records, pool.state_dicts, pool.dataset, pool.normalization, legacy,
              pool.manifest["provenance"])
    assert _pretrain(tmp_path / "old", 3, "--resume") == 0
    a, b = _weights(tmp_path / "three"), _weights(tmp_path / "old")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_milestones_set_the_schedule_and_none_grows_a_pool_from_before_it(tmp_path, capsys):
    """--lr-milestones sets every architecture's schedule (recorded in the manifest); a pool from before
    the schedule, asked to grow under one that takes effect, is refused with the fix, and grows with
    --lr-milestones none exactly as a pool trained in one go without a schedule."""
    from fastfree.pool.progress import LEGACY_PRETRAIN
    from fastfree.pool.store import save_pool

    assert _pretrain(tmp_path / "decayed", 2, "--lr-milestones", "1", "--lr-gamma", "0.5") == 0
    assert _pretrain(tmp_path / "plain", 2) == 0
    manifest = load_pool(tmp_path / "decayed").manifest["pretrain"]
    assert (manifest["conv4_milestones"], manifest["lr_gamma"]) == ([1], 0.5)
    a, b = _weights(tmp_path / "decayed"), _weights(tmp_path / "plain")
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the second epoch ran at half the rate

    assert _pretrain(tmp_path / "three", 3, "--lr-milestones", "none") == 0
    pool = load_pool(tmp_path / "plain")
    legacy = {k: v for k, v in pool.manifest["pretrain"].items() if k not in LEGACY_PRETRAIN}
    save_pool(tmp_path / "plain", pool.records, pool.state_dicts, pool.dataset, pool.normalization, legacy,
              pool.manifest["provenance"])
    capsys.readouterr()
    assert _pretrain(tmp_path / "plain", 3, "--resume", "--lr-milestones", "1") == 2
    err = capsys.readouterr().err
    assert "conv4_milestones: [] there, [1] now" in err and "grows with --lr-milestones none" in err
    assert _pretrain(tmp_path / "plain", 3, "--resume", "--lr-milestones", "none") == 0
    a, b = _weights(tmp_path / "three"), _weights(tmp_path / "plain")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert _pretrain(tmp_path / "x", 2, "--lr-milestones", "none", "1") == 2
    assert "epochs or 'none' alone" in capsys.readouterr().err


def test_lr_gamma_counts_only_where_a_milestone_acts(tmp_path, capsys):
    """A 2-epoch Conv4 pool has no milestone within its epochs: its gamma never acts, so it is not
    recorded and growing with another --lr-gamma gives the pool trained in one go; where a milestone
    acts, another gamma is refused. A manifest written when gamma was always recorded still grows."""
    from fastfree.pool.store import save_pool

    assert _pretrain(tmp_path / "three", 3) == 0
    assert _pretrain(tmp_path / "grown", 2) == 0
    assert load_pool(tmp_path / "grown").manifest["pretrain"]["lr_gamma"] is None
    pool = load_pool(tmp_path / "grown")  # as the version before this rule wrote it
    save_pool(tmp_path / "grown", pool.records, pool.state_dicts, pool.dataset, pool.normalization,
              {**pool.manifest["pretrain"], "lr_gamma": 0.2}, pool.manifest["provenance"])
    assert _pretrain(tmp_path / "grown", 3, "--resume", "--lr-gamma", "0.5") == 0
    a, b = _weights(tmp_path / "three"), _weights(tmp_path / "grown")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert _pretrain(tmp_path / "decayed", 2, "--lr-milestones", "1") == 0
    capsys.readouterr()
    assert _pretrain(tmp_path / "decayed", 3, "--resume", "--lr-milestones", "1", "--lr-gamma", "0.5") == 2
    assert "lr_gamma: 0.2 there, 0.5 now" in capsys.readouterr().err


def test_a_paused_batched_group_is_kept_on_disk_and_continues_the_uninterrupted_pool(tiny_split, tmp_path):
    """float64 (its dtype survives the file): groups [0, 1] and [2], 3 epochs of 2 steps; the stop comes in
    the second group's first epoch, so the first is saved as teachers and the second as its state after
    epoch 1. Continued from the folder, the pool is the uninterrupted one, and the state file goes once its
    teachers are saved; an unreadable one is refused, naming the fix."""
    cfg = PretrainConfig(teachers=3, epochs=3, batch_size=20, group_size=2)
    specs = sample_teacher_specs(tiny_split.classes, 3, 5, seed=4)
    whole = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", torch.float64)
    progress = PretrainProgress(tmp_path, _fp(cfg, "batched"))
    progress.start()
    stop, calls = StopRequest(), []

    def step(k):
        calls.append(k)
        if len(calls) == 7:  # the first step of the second group
            stop.signum = signal.SIGINT

    with pytest.raises(StoppedBySignal, match="^stopped by SIGINT with 2 of 3 teachers trained, each saved, and the 1 "
                                              "under way saved after epoch 1 of 3$"):
        pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", torch.float64, step,
                      on_trained=progress.save, stop=stop, on_paused=progress.save_paused)
    group = tmp_path / PROGRESS / PAUSED.format("0002")
    assert group.is_file()

    again = PretrainProgress(tmp_path, _fp(cfg, "batched"))
    done, (paused,) = again.resume(specs), again.paused()
    assert sorted(done) == [0, 1] and (paused.indices, paused.epochs_done) == ((2,), 1)
    assert paused.tensors["params.features.0.weight"].dtype == torch.float64
    resumed = pretrain_pool(tiny_split, CIFAR100_NORM, specs, cfg, "batched", torch.float64, done=done,
                            paused=[paused], on_trained=again.save, on_paused=again.save_paused)
    _equal(resumed, whole)
    assert not group.exists() and sorted(p.name for p in (tmp_path / PROGRESS).glob("*.safetensors")) == \
        ["teacher0000.safetensors", "teacher0001.safetensors", "teacher0002.safetensors"]

    group.write_bytes(b"torn")
    with pytest.raises(FastFreeError, match=r"under-way-0002.safetensors cannot be read .*: delete it to train its "
                                            r"teachers from their first epoch"):
        again.paused()
