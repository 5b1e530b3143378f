"""Temperature scaling of a pool's teachers: the same teachers, calibrated on their held-out images.

Not part of FREE. An experiment's tool: a pool trained the protocol's 60 epochs gave FREE lower
accuracy than an 8-epoch pool of the same classes and seeds, and its teachers are far more
confident and worse calibrated (profiling/teacher_confidence.py). FREE reads its teachers only
through their softmaxes (FIVE's inversion loss, BELL's soft targets), so this writes a copy of a
pool whose every teacher's logits are multiplied by one scalar beta = 1 / T, the one that
minimises the teacher's negative log-likelihood on its own held-out images (temperature scaling,
Guo et al. 2017). Each teacher's predictions (argmax, so its accuracy) are unchanged; only how
sure it is changes. A FREE run on the copy against a run on the original, same seed and tasks,
then says whether calibration matters.

    python -m fastfree.profiling.temper_pool --preset cifar-fs --data-root DIR --pool POOL --out POOL_T --json t.json

The scale goes into the last linear layer (weight and bias), so the copy is an ordinary pool: it
loads, folds and trains like any other, under its own weights digest. `temperature.json` beside
its manifest records each teacher's beta, the source pool's digest and the NLL before and after.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from torch import nn

from fastfree.cli import add_common_flags
from fastfree.commands.common import data_config, load_on_device, run_metadata, setup, write_json
from fastfree.data.split import ImageSplit
from fastfree.errors import FastFreeError, exit_on_refusal
from fastfree.pool.store import Pool, load_pool, save_pool
from fastfree.profiling.teacher_confidence import STATS, heldout_logits, pool_on_data, teacher_stats

SIDECAR = "temperature.json"


def nll_slope(beta: float, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """d/d beta of the mean NLL of beta * logits: E_softmax[z] - z_label, averaged. Increasing in beta
    (the NLL is convex in beta: a log-sum-exp of terms linear in it, minus a linear term)."""
    z = logits.double()  # no copy when fit_logit_scale already converted them
    p = (beta * z).softmax(-1)
    return ((p * z).sum(-1) - z.gather(1, labels[:, None]).squeeze(1)).mean().item()


def fit_logit_scale(logits: torch.Tensor, labels: torch.Tensor, lo: float = 1e-3, hi: float = 1e3,
                    steps: int = 200) -> float:
    """The beta > 0 minimising the mean NLL of softmax(beta * logits) for `labels`: bisection (in log
    space) on the slope, which is monotone. A teacher that is right on every image with margin has
    no finite optimum (sharper is always better): the bracket's end is returned, and a caller should
    say so."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise FastFreeError(f"fit_logit_scale needs logits [n, C] and n labels, got {tuple(logits.shape)} "
                            f"and {tuple(labels.shape)}")
    logits = logits.double()  # once, not at each of the bisection's steps
    if nll_slope(lo, logits, labels) >= 0:
        return lo
    if nll_slope(hi, logits, labels) <= 0:
        return hi
    a, b = math.log(lo), math.log(hi)
    for _ in range(steps):
        m = (a + b) / 2
        if nll_slope(math.exp(m), logits, labels) < 0:
            a = m
        else:
            b = m
    return math.exp((a + b) / 2)


def logit_layer(model: nn.Module) -> nn.Linear:
    """The classifier: the model's last nn.Linear (Conv4's `classifier`, the ResNets' head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FastFreeError(f"{type(model).__name__} has no linear layer to scale")
    return linears[-1]


def scaled_state_dict(model: nn.Module, beta: float) -> dict[str, torch.Tensor]:
    """The model's state dict with its logit layer multiplied by beta: logits become beta * logits
    (exact up to one rounding per weight, since the layer is the last operation)."""
    head = logit_layer(model)
    with torch.no_grad():
        head.weight.mul_(beta)
        if head.bias is not None:
            head.bias.mul_(beta)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def temper_pool(pool: Pool, split: ImageSplit, out) -> dict:
    """Fit each teacher's beta on its held-out images, write the scaled copy to `out`; returns the
    record that also lands in out/temperature.json."""
    per_teacher, state_dicts = [], []
    for i, r in enumerate(pool.records):
        logits, labels = heldout_logits(pool, i, split)
        beta = fit_logit_scale(logits, labels)
        before, after = teacher_stats(logits, labels), teacher_stats(beta * logits.double(), labels)
        per_teacher.append({"index": r.index, "beta": beta, "temperature": 1 / beta,
                            "at_bracket_end": beta in (1e-3, 1e3), "before": before, "after": after})
        state_dicts.append(scaled_state_dict(pool.model(i, "cpu"), beta))
    save_pool(out, pool.records, state_dicts, pool.dataset, pool.normalization, pool.manifest.get("pretrain"),
              provenance=pool.manifest.get("provenance"))
    mean = {w: {k: sum(t[w][k] for t in per_teacher) / len(per_teacher) for k in STATS} for w in ("before", "after")}
    record = {"what": "each teacher's logits multiplied by beta = 1/T, the held-out NLL minimiser",
              "source_pool": str(pool.path), "source_weights_sha256": pool.manifest["weights_sha256"],
              "beta_mean": sum(t["beta"] for t in per_teacher) / len(per_teacher), "mean": mean,
              "per_teacher": per_teacher}
    tempered = load_pool(out)  # the copy loads as a pool (its digests check); its digest goes in the record
    record["weights_sha256"] = tempered.manifest["weights_sha256"]
    (tempered.path / SIDECAR).write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", required=True, help="the pool to calibrate (left untouched)")
    p.add_argument("--out", required=True, help="where the tempered copy goes")
    add_common_flags(p)
    args = p.parse_args(argv)
    preset, device, _ = setup(args)
    dataset, _ = load_on_device(data_config(args, preset), device)
    r = temper_pool(pool_on_data(args.pool, dataset.name), dataset.train, args.out)
    b, a = r["mean"]["before"], r["mean"]["after"]
    print(f"{args.out}: {len(r['per_teacher'])} teachers, mean beta {r['beta_mean']:.3f} (T = 1/beta); held-out "
          f"accuracy {100 * b['heldout_accuracy']:.2f}% -> {100 * a['heldout_accuracy']:.2f}%, top softmax "
          f"{b['mean_max_softmax']:.3f} -> {a['mean_max_softmax']:.3f}, NLL {b['heldout_nll']:.3f} -> "
          f"{a['heldout_nll']:.3f}", flush=True)
    for t in r["per_teacher"]:
        if t["at_bracket_end"]:
            print(f"    warning: teacher {t['index']} has no finite NLL minimum (beta {t['beta']:g}, the search's "
                  "bound): it is right on every held-out image with margin, or wrong on every one", flush=True)
    write_json(args.json, {**r, **run_metadata(device)})
    return 0


if __name__ == "__main__":
    exit_on_refusal(main)
