"""A run's own teacher pool: the one in its directory, pretrained there first when absent
(`fastfree train` without --pool, for one data set or for each domain)."""

from __future__ import annotations

from pathlib import Path

import torch

from fastfree.data.split import FewShotDataset
from fastfree.device import resolve_pool_engine
from fastfree.errors import FastFreeError
from fastfree.folder_lock import hold
from fastfree.graceful_stop import StoppedBySignal, stop_on_signals
from fastfree.pool.group_state import continuing
from fastfree.pool.pretrain import STOPPING_AFTER, PretrainConfig, pretrain_pool
from fastfree.pool.progress import PretrainProgress, fingerprint
from fastfree.pool.store import Pool, load_pool, records_from_training, save_pool
from fastfree.pool.teachers import sample_teacher_specs


def pool_in_run_dir(pool_dir: Path, dataset: FewShotDataset, cfg: PretrainConfig, dtype: torch.dtype,
                    what: str) -> Pool:
    """Load the pool at `pool_dir`, pretraining it with `cfg` (its seed draws the teachers) if absent.

    Each finished teacher is kept in the pool's progress folder as `fastfree pretrain` keeps it, and
    the same command run again continues from them (an interrupt lost the whole pretraining: hours for
    the paper's 100 teachers); other settings than the interrupted pretraining's are refused."""
    if not (pool_dir / "manifest.json").is_file():
        pool_dir.mkdir(parents=True, exist_ok=True)  # pretraining writes into it: one command at a time
        hold(pool_dir)
        specs = sample_teacher_specs(dataset.train.classes, cfg.teachers, cfg.ways, cfg.seed, cfg.archs)
        engine = resolve_pool_engine("auto", dataset.train.images.device)  # teachers of one engine only, as pretrain's
        progress = PretrainProgress(pool_dir, fingerprint(cfg.to_dict(), dataset.name, dataset.normalization.to_dict(),
                                                          dataset.image_size, {}, str(dtype).removeprefix("torch."),
                                                          engine))
        if progress.exists():
            try:
                done = progress.resume(specs)
            except FastFreeError as e:  # worded for `pretrain --resume`: this is train's own pool
                raise FastFreeError(f"{what}, its pool's pretraining: {str(e).removeprefix('--resume: ')}") from e
            paused = progress.paused()
            print(f"{what}: pretraining {cfg.teachers} teachers into {pool_dir}, continued: {len(done)} already "
                  "trained" + (f", {continuing(paused, cfg.epochs)}" if paused else ""), flush=True)
        else:
            progress.start()
            done, paused = {}, []
            print(f"{what}: pretraining {cfg.teachers} teachers into {pool_dir}", flush=True)
        # Ctrl-C / SIGTERM: the teachers under way stop at their epoch's end, their state kept
        # (fastfree/graceful_stop.py); the run has no checkpoint yet, so the same command continues it, not
        # --resume (which needs one)
        again = "run the same command to continue (its pool's pretraining goes on from what was saved)"
        with stop_on_signals(STOPPING_AFTER) as stop:
            try:
                trained = pretrain_pool(dataset.train, dataset.normalization, specs, cfg, engine, dtype, done=done,
                                        on_trained=progress.save, stop=stop, paused=paused,
                                        on_paused=progress.save_paused)
            except StoppedBySignal as e:
                e.then = again
                raise
        save_pool(pool_dir, records_from_training(trained, cfg, dataset.image_size), [t.state_dict for t in trained],
                  dataset.name, dataset.normalization, cfg.to_dict())
        progress.finish()
        if stop.requested:  # asked while the last teachers trained: the pool is whole, the run not started
            raise StoppedBySignal(stop.signum, len(trained), len(trained),
                                  f"with its pool of {len(trained)} teachers complete in {pool_dir}",
                                  "run the same command to continue (it trains on that pool)")
    return load_pool(pool_dir)


__all__ = ["pool_in_run_dir"]
