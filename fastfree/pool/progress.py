"""Resumable pretraining: every finished teacher is on disk at once, so nothing is lost.

`fastfree pretrain --out POOL` keeps POOL/.progress while it runs: `fingerprint.json` (what a
teacher's weights depend on: the pretraining config but for the number of teachers, the data,
the dtype and the engine) and one safetensors file per finished teacher, its spec, held-out
accuracy and best epoch in the file's metadata. Each file is written to a temporary name and
renamed, so a kill leaves whole teachers only. `--resume` reuses every teacher whose fingerprint
and spec match and trains the rest; a finished pool at POOL counts as progress too, so a pool
grows (`--teachers 100 --resume` over a pool of 20 trains the 80 new ones). A teacher depends
only on its own spec and the config, so the resumed pool equals an uninterrupted one. Teachers
stopped by a signal mid-way leave `under-way-NNNN.safetensors` (a teacher's, or a batched
group's, state at an epoch's end), and `--resume` continues them from the next epoch
(fastfree/pool/group_state.py), equally exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from fastfree.errors import FastFreeError
from fastfree.free.atomic import atomic_write_text
from fastfree.pool.group_state import GroupState
from fastfree.pool.pretrain import TrainedTeacher
from fastfree.pool.store import MANIFEST, load_pool
from fastfree.pool.teachers import TeacherSpec
from fastfree.read_back import read_json
from fastfree.safetensors_io import atomic_save_readable
from fastfree.settings_diff import settings_diff

PROGRESS = ".progress"
FINGERPRINT = "fingerprint.json"
PAUSED = "under-way-{}.safetensors"  # teachers paused at an epoch's end, by their first index
REPLACING = "replacing-the-pool"  # marks a progress folder started with --overwrite: the old pool is not reused


def fingerprint(pretrain: dict, dataset: str, normalization: dict, image_size: int, data: dict, dtype: str,
                engine: str) -> dict:
    """What every teacher's weights depend on. The teacher count and the data folder's path are
    left out: a pool may grow, and data may move. The threads engine is recorded as the reference:
    its teachers are the reference's (at one intra-op thread), so either continues the other's pool."""
    engine = "reference" if engine == "threads" else engine
    return {
        "pretrain": {k: v for k, v in pretrain.items() if k != "teachers"},
        "dataset": dataset, "normalization": normalization, "image_size": image_size,
        "data": {k: v for k, v in data.items() if k != "root"}, "dtype": dtype, "engine": engine,
    }


# pretraining settings added after pools were first written: what an older pool (or progress folder)
# without them was trained with (None: whatever is asked now, as it had no effect without milestones)
LEGACY_PRETRAIN = {"conv4_milestones": [], "resnet_milestones": [], "lr_gamma": None}


def _with_legacy(stored: dict, want: dict) -> dict:
    """`stored` pretraining settings, completed with what older versions did for the keys they lacked."""
    out = dict(stored)
    for k, v in LEGACY_PRETRAIN.items():
        if k not in out:
            out[k] = want.get(k) if v is None else v
    if not out["conv4_milestones"] and not out["resnet_milestones"]:
        out["lr_gamma"] = None  # recorded before it was dropped where no milestone acts (PretrainConfig.to_dict)
    return out


def _spec_meta(t: TrainedTeacher) -> dict[str, str]:
    s = t.spec
    return {"index": str(s.index), "classes": json.dumps(list(s.classes)), "seed": str(s.seed), "arch": s.arch,
            "heldout_accuracy": repr(float(t.heldout_accuracy)), "best_epoch": str(int(t.best_epoch))}


def _json(obj) -> dict:
    return json.loads(json.dumps(obj))  # tuples as lists, as they come back from disk


PROVENANCE = ("data", "dtype", "engine")  # the fingerprint's part a pool's manifest records beside its config


class PretrainProgress:
    """The progress folder of one pool directory."""

    def __init__(self, out: str | Path, fp: dict):
        self.out = Path(out)
        self.dir = self.out / PROGRESS
        self.fp = _json(fp)

    def provenance(self) -> dict:
        """For the manifest (`save_pool`): lets a later --resume check a grown pool's settings."""
        return {k: self.fp[k] for k in PROVENANCE}

    def exists(self) -> bool:
        return self.dir.is_dir()

    def start(self, overwrite: bool = False) -> None:
        """A fresh run: refuses to overwrite an interrupted one, and a finished pool unless told to
        (pretraining one can take hours; the old pool stays in place until the new one is saved)."""
        if self.exists():
            raise FastFreeError(f"{self.dir} holds the teachers of an interrupted pretraining: pass --resume to "
                                f"continue it, or delete {self.dir} to start over")
        replacing = (self.out / MANIFEST).is_file()
        if replacing and not overwrite:
            raise FastFreeError(f"{self.out} already holds a pool: pass --resume to keep its teachers (a larger "
                                f"--teachers grows it), --overwrite to replace it, or choose another --out")
        if replacing:  # so that --resume continues the replacement instead of growing the old pool; before
            # the fingerprint, which makes the folder a run in progress: never one without its marker
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / REPLACING).touch()
        self._write_fingerprint()

    def _write_fingerprint(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / FINGERPRINT, json.dumps(self.fp, indent=2))

    def resume(self, specs: list[TeacherSpec]) -> dict[int, TrainedTeacher]:
        """The finished teachers among `specs`: from a finished pool at `out`, then the progress folder."""
        replacing = (self.dir / REPLACING).is_file()  # an interrupted --overwrite: the old pool does not count
        done = self._from_pool(specs) if (self.out / MANIFEST).is_file() and not replacing else {}
        if self.exists():
            path = self.dir / FINGERPRINT
            stored = read_json(path, f"Restore it from a copy, or delete {self.dir} to start the pretraining "
                               "over") if path.is_file() else None
            if stored is not None and "pretrain" in stored:
                stored["pretrain"] = _with_legacy(stored["pretrain"], self.fp["pretrain"])
            if stored != self.fp:
                differs = settings_diff(stored, self.fp, missing=f"no readable {FINGERPRINT}")
                raise FastFreeError(f"--resume: {self.dir} was started with other settings ({differs}): resume "
                                    f"with the same flags, or delete {self.dir} to start over")
            done.update(self._from_files(specs))
        elif not done:
            raise FastFreeError(f"--resume: {self.out} holds neither an interrupted pretraining ({PROGRESS}) nor "
                                f"a pool; start without --resume")
        self._write_fingerprint()
        return done

    def _from_pool(self, specs: list[TeacherSpec]) -> dict[int, TrainedTeacher]:
        pool = load_pool(self.out)
        if "imported" in pool.manifest:
            raise FastFreeError(f"--resume: the pool at {self.out} was imported (fastfree import-pool), not "
                                "pretrained here, so pretraining cannot grow it: import all the models into one "
                                "pool, or pretrain into another --out")
        have = {
            "pretrain": _with_legacy({k: v for k, v in pool.manifest.get("pretrain", {}).items() if k != "teachers"},
                                     self.fp["pretrain"]),
            "dataset": pool.dataset, "normalization": pool.normalization.to_dict(),
            "image_size": pool.records[0].image_size,
        }
        want = {k: self.fp[k] for k in have}
        # data, dtype and engine are checked too where the pool records them (its manifest's provenance;
        # older pools lack it)
        prov = pool.manifest.get("provenance")
        if prov is not None:
            have.update({k: prov[k] for k in PROVENANCE})
            want.update(self.provenance())
        if _json(have) != want:
            differs = settings_diff(_json(have), want)
            hint = (" (a pool trained before the learning-rate schedule existed grows with --lr-milestones none)"
                    if "milestones: []" in differs else "")
            raise FastFreeError(
                f"--resume: the pool at {self.out} was trained with other settings ({differs}): "
                f"grow it with the flags it was trained with{hint}, or choose another --out")
        by_index = {s.index: s for s in specs}
        dropped = [r.index for r in pool.records if r.index not in by_index]
        if dropped:
            raise FastFreeError(f"--resume: the pool at {self.out} has {len(pool.records)} teachers and --teachers "
                                f"{len(specs)} would drop {len(dropped)} of them: pass --teachers >= "
                                f"{len(pool.records)}, or choose another --out for a smaller pool")
        done = {}
        for r, sd in zip(pool.records, pool.state_dicts):
            spec = TeacherSpec(r.index, r.classes, r.seed, r.arch)
            if by_index.get(r.index) == spec:
                done[r.index] = TrainedTeacher(spec, sd, r.heldout_accuracy, r.best_epoch)
        return done

    def _from_files(self, specs: list[TeacherSpec]) -> dict[int, TrainedTeacher]:
        done = {}
        for spec in specs:
            path = self.dir / f"teacher{spec.index:04d}.safetensors"
            if not path.is_file():
                continue
            try:
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata()
                state = load_file(str(path))
            except (SafetensorError, OSError) as e:
                raise FastFreeError(f"--resume: {path} cannot be read ({e}): delete it to train that teacher "
                                    f"again") from e
            got = TeacherSpec(int(meta["index"]), tuple(json.loads(meta["classes"])), int(meta["seed"]), meta["arch"])
            if got != spec:
                raise FastFreeError(f"--resume: {path} holds teacher {got} but this pool's teacher {spec.index} is "
                                    f"{spec}: delete {self.dir} to start over")
            done[spec.index] = TrainedTeacher(spec, state, float(meta["heldout_accuracy"]), int(meta["best_epoch"]))
        return done

    def save(self, trained: list[TrainedTeacher]) -> None:
        """Each teacher atomically: a kill leaves it whole or absent. A paused state goes once the teacher
        it is named by is saved: a group's teachers are saved together, and a state of a group one of
        whose teachers is trained can no longer continue any group."""
        for t in trained:
            path = self.dir / f"teacher{t.spec.index:04d}.safetensors"
            atomic_save_readable({k: v.detach().to("cpu").contiguous() for k, v in t.state_dict.items()}, path,
                                 metadata=_spec_meta(t))
            (self.dir / PAUSED.format(f"{t.spec.index:04d}")).unlink(missing_ok=True)

    def _paused_files(self) -> list[Path]:
        return sorted(self.dir.glob(PAUSED.format("[0-9]*")))

    def save_paused(self, state: GroupState) -> None:
        """Teachers paused at an epoch's end (fastfree/pool/group_state.py: a batched group, or a
        reference teacher), atomically, named by their first index."""
        atomic_save_readable(state.tensors, self.dir / PAUSED.format(f"{state.indices[0]:04d}"),
                             metadata={"indices": json.dumps(list(state.indices)),
                                       "epochs_done": str(state.epochs_done)})

    def paused(self) -> list[GroupState]:
        """The paused teachers' states the progress folder holds (call after `resume`, which checks that
        the folder was started with these settings)."""
        states = []
        for path in self._paused_files():
            try:
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata()
                states.append(GroupState(tuple(json.loads(meta["indices"])), int(meta["epochs_done"]),
                                         load_file(str(path))))
            except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
                raise FastFreeError(f"--resume: {path} cannot be read ({e}): delete it to train its teachers from "
                                    "their first epoch") from e
        return states

    def finish(self) -> None:
        """After the pool is written: the progress is in it."""
        shutil.rmtree(self.dir, ignore_errors=True)


__all__ = ["PAUSED", "PROGRESS", "PretrainProgress", "fingerprint"]
