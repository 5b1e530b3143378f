"""How sure a pool's teachers are on their own held-out images: accuracy, confidence, entropy, NLL.

Not a test: it reports. FREE learns from what its teachers say about generated images (the
inversion loss, BELL's soft targets), so a pool's calibration may matter beside its accuracy.
Each teacher is evaluated on the images its pretraining held out (the last `heldout_fraction`
of each of its classes' meta-train images, fastfree.pool.teachers.teacher_data): accuracy
(which must equal the manifest's, a check that the data is the pool's), the mean top softmax
probability, the mean entropy of the softmax (nats; ln 5 = 1.61 is uniform over 5 ways) and
the mean negative log-likelihood of the true class. Means over teachers, and per teacher.

    python -m fastfree.profiling.teacher_confidence --preset cifar-fs --data-root DIR --pool P1 --pool P2 --json out.json

The data flags are every command's (fastfree.cli), so a pool is evaluated on the data set, image
size and normalisation its preset or flags give, as `fastfree pretrain` trained it.
"""

from __future__ import annotations

import argparse

import torch

from fastfree.cli import add_common_flags
from fastfree.commands.common import data_config, load_on_device, run_metadata, setup, write_json
from fastfree.data.split import ImageSplit
from fastfree.errors import FastFreeError, exit_on_refusal
from fastfree.pool.store import Pool, load_pool
from fastfree.pool.teachers import TeacherSpec, teacher_data

STATS = ("heldout_accuracy", "mean_max_softmax", "mean_entropy_nats", "heldout_nll")


def teacher_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, mean top probability, mean entropy and NLL of logits [n, C] for labels [n]."""
    logp = logits.double().log_softmax(-1)
    p = logp.exp()
    return {"heldout_accuracy": (logp.argmax(-1) == labels).double().mean().item(),
            "mean_max_softmax": p.max(-1).values.mean().item(),
            "mean_entropy_nats": -(p * logp).sum(-1).mean().item(),
            "heldout_nll": -logp.gather(1, labels[:, None]).mean().item()}


def heldout_logits(pool: Pool, i: int, split: ImageSplit, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher i's logits on the images its pretraining held out, and their labels (0..N-1)."""
    fraction = pool.manifest["pretrain"].get("heldout_fraction", pool.manifest.get("imported", {}).get("heldout_fraction"))
    if fraction is None:  # an imported pool without --classes: which images each teacher learned is unknown
        raise FastFreeError(f"{pool.path}: the teachers' classes are unknown (imported without --classes), so they "
                            "have no held-out images to measure on")
    r = pool.records[i]
    data = teacher_data(split, TeacherSpec(r.index, tuple(r.classes), r.seed, r.arch), float(fraction))
    model = pool.model(i, split.device)
    with torch.no_grad():
        logits = torch.cat([model(pool.normalization(split.images[idx])) for idx in data.heldout_idx.split(batch)])
    return logits, data.heldout_y


def pool_on_data(path, dataset_name: str) -> Pool:
    """The pool at `path`, refused (with the fix) when it was trained on another data set."""
    pool = load_pool(path)
    if pool.dataset != dataset_name:
        raise FastFreeError(f"the pool at {pool.path} was trained on {pool.dataset!r}, not {dataset_name!r}: "
                            f"pass --data (and --data-root) of the pool's data set")
    return pool


def pool_confidence(pool: Pool, split: ImageSplit, batch: int = 512) -> dict:
    """Each teacher's stats on its held-out images, their means, and the largest difference between
    the recomputed held-out accuracy and the manifest's (0 when `split` is the pool's data)."""
    per_teacher = [teacher_stats(*heldout_logits(pool, i, split, batch)) for i in range(len(pool))]
    means = {k: sum(t[k] for t in per_teacher) / len(per_teacher) for k in STATS}
    drift = max(abs(t["heldout_accuracy"] - r.heldout_accuracy) for t, r in zip(per_teacher, pool.records))
    return {"path": str(pool.path), "teachers": len(pool), "epochs": pool.manifest["pretrain"].get("epochs"),
            "mean": means, "accuracy_vs_manifest_max_abs_diff": drift, "per_teacher": per_teacher}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", action="append", required=True, help="a pool directory (repeat to compare pools)")
    add_common_flags(p)
    args = p.parse_args(argv)
    preset, device, _ = setup(args)
    dataset, _ = load_on_device(data_config(args, preset), device)
    result = {"benchmark": "teachers on their own held-out images", "data": dataset.name, "pools": [],
              **run_metadata(device)}
    for path in args.pool:
        r = pool_confidence(pool_on_data(path, dataset.name), dataset.train)
        result["pools"].append(r)
        m = r["mean"]
        trained = "imported" if r["epochs"] is None else f"{r['epochs']} epochs"
        print(f"{path}: {r['teachers']} teachers, {trained}: held-out accuracy {100 * m['heldout_accuracy']:.2f}%"
              f", top softmax {m['mean_max_softmax']:.3f}, entropy {m['mean_entropy_nats']:.3f} nats, "
              f"NLL {m['heldout_nll']:.3f}", flush=True)
        if r["accuracy_vs_manifest_max_abs_diff"] > 0.01:
            print(f"    warning: held-out accuracy differs from the manifest's by up to "
                  f"{r['accuracy_vs_manifest_max_abs_diff']:.3f}: is this the pool's data?", flush=True)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    exit_on_refusal(main)
