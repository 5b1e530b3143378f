"""How differently a pool's teachers see the same images: linear CKA between their features
(the paper's Appendix F, Fig. 8).

Not a test: it reports. FREE's premise is that pre-trained models are heterogeneous: the same image
lands in different places in different teachers' feature spaces (Fig. 4), so tasks recovered from
them pull a meta-learner in different directions, which BELL is there to align. Appendix F shows it
with centered kernel alignment (Kornblith et al., 2019) between the features of the collected
models, for distinct CIFAR-FS tasks (Fig. 8a) and for Conv4 / ResNet-10 / ResNet-18 teachers (8c).
This measures that for any pool: every teacher's features (the input of its classifier: Conv4's
flattened last block, a ResNet's pooled last stage) on the same images, and linear CKA between every
pair, 1 on the diagonal, 0 for unrelated representations. Linear CKA compares representations of
different widths, is invariant to rotations and isotropic scaling of either, and not to other
invertible linear maps (which is why it, and not CCA, is the usual choice for this).

    python -m fastfree.profiling.pool_cka --preset cifar-fs --data-root DIR --pool P [--pool P2] \\
        --split train --images 1000 --json cka.json --png cka.png

The images are drawn uniformly (`--image-seed`) from one split of the pools' data set: meta-train (the
default) holds every teacher's own classes among the 64; meta-test holds classes none of them saw.
The JSON holds the matrix (teachers in the pools' order), its mean off the diagonal, the means per
pair of architectures, per number of classes two teachers of one pool and architecture share, per
pair of pools, between the teachers of one recipe (architecture, classes, seed) in two pools, and
how each later pool's CKA differs from the first's over the pairs of recipes both hold (a pool
trained longer from the same recipes: are its teachers more alike or less?);
`--png` draws the heatmap (matplotlib: `pip install -e ".[figures]"`), teachers grouped by pool
and architecture. `--untrained` measures each teacher's architecture freshly initialised
instead: the scale a pool's numbers read against (networks that learned nothing already agree in
part on the same inputs). The paper's Fig. 8b (pools of different data sets) needs images both
sides can read; this compares pools of one data set.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import torch
from torch import nn

from fastfree.cli import add_common_flags
from fastfree.commands.common import data_config, load_on_device, run_metadata, setup, write_json
from fastfree.data.split import ImageSplit
from fastfree.errors import FastFreeError, exit_on_refusal
from fastfree.models import build_model
from fastfree.pool.fit import check_pool_fits
from fastfree.pool.store import Pool, load_pool


def linear_cka(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Linear CKA between every pair of representations [n, d_i] of the same n inputs: float64 [T, T].

    With X and Y centred over the inputs, CKA = ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F), the
    normalised HSIC of the linear kernels X X^T and Y Y^T computed in feature space (d x d products
    instead of n x n Grams, so a 100-teacher pool on 1000 images needs no 8 MB Gram per teacher).
    """
    if not features:
        raise FastFreeError("CKA needs at least one representation")
    rows = {f.shape[0] for f in features}
    if len(rows) != 1 or any(f.dim() != 2 for f in features):
        raise FastFreeError(f"CKA compares representations [n, d] of the same n inputs, got shapes "
                            f"{[tuple(f.shape) for f in features]}")
    xs = [f.double() - f.double().mean(0) for f in features]
    norms = [torch.linalg.matrix_norm(x.T @ x) for x in xs]
    constant = [i for i, s in enumerate(norms) if s == 0]
    if constant:
        raise FastFreeError(f"representation(s) {constant} are the same for every input (e.g. a dead ReLU layer): "
                            "CKA is undefined for them; use more or other images (--images, --split)")
    out = torch.eye(len(xs), dtype=torch.float64)
    for i, j in combinations(range(len(xs)), 2):
        out[i, j] = out[j, i] = (xs[i].T @ xs[j]).square().sum() / (norms[i] * norms[j])
    return out


def classifier_inputs(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """What `model.classifier` (the last linear layer of every fastfree model) receives: [n, d] float."""
    seen: list[torch.Tensor] = []
    hook = model.classifier.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().float()))
    try:
        with torch.no_grad():
            for chunk in images.split(batch):
                model(chunk)
    finally:
        hook.remove()
    return torch.cat(seen).flatten(1)


def sample_images(split: ImageSplit, n: int, seed: int) -> torch.Tensor:
    """`n` image indices of `split`, uniformly without replacement, in a seeded order."""
    if not 2 <= n <= len(split.labels):
        raise FastFreeError(f"--images {n}: the {split.name} split holds {len(split.labels)} images and CKA needs "
                            f"at least 2; pass --images between 2 and {len(split.labels)}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(split.labels), generator=g)[:n].sort().values


def _mean(values: list[float]) -> dict:
    return {"pairs": len(values), "mean": sum(values) / len(values)} if values else {"pairs": 0, "mean": None}


def summarize(cka: torch.Tensor, teachers: list[dict]) -> dict:
    """Means of `cka` off the diagonal: all pairs, per pair of architectures, per number of shared
    classes (pairs of one pool and architecture, so neither is confounded with it), per pair of
    pools, and over the pairs of two pools' teachers of one recipe (architecture, classes and seed:
    one teacher trained twice, e.g. for 8 and for 60 epochs)."""
    pairs = list(combinations(range(len(teachers)), 2))
    value = {(i, j): cka[i, j].item() for i, j in pairs}
    by_arch: dict[str, list[float]] = {}
    by_shared: dict[str, dict[int, list[float]]] = {}
    by_pool: dict[str, list[float]] = {}
    same_recipe: list[float] = []
    for (i, j), v in value.items():
        a, b = teachers[i], teachers[j]
        if a["pool"] != b["pool"] and _recipe(a) == _recipe(b):
            same_recipe.append(v)
        by_arch.setdefault(" / ".join(sorted((a["arch"], b["arch"]))), []).append(v)
        if a["arch"] == b["arch"] and a["pool"] == b["pool"]:
            shared = len(set(a["classes"]) & set(b["classes"]))
            by_shared.setdefault(a["arch"], {}).setdefault(shared, []).append(v)
        by_pool.setdefault(" / ".join(map(str, sorted((a["pool"], b["pool"])))), []).append(v)
    return {"mean_off_diagonal": _mean(list(value.values())),
            "by_architecture_pair": {k: _mean(v) for k, v in sorted(by_arch.items())},
            "by_shared_classes": {arch: {str(k): _mean(v) for k, v in sorted(d.items())}
                                  for arch, d in sorted(by_shared.items())},
            "by_pool_pair": {k: _mean(v) for k, v in sorted(by_pool.items())},
            "same_recipe_across_pools": _mean(same_recipe),
            "within_pool_change": within_pool_change(cka, teachers)}


def untrained_twin(pool: Pool, i: int, device: torch.device, seed: int) -> nn.Module:
    """Teacher i's architecture, width and image size, freshly initialised from `seed`, in eval mode."""
    r = pool.records[i]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(r.arch, r.num_classes, r.width, r.image_size).to(device).eval()


def _recipe(teacher: dict) -> tuple:
    return teacher["arch"], tuple(teacher["classes"]), teacher["seed"]


def within_pool_change(cka: torch.Tensor, teachers: list[dict]) -> dict:
    """Each later pool against the first, over the pairs of recipes both hold (one teacher's recipe:
    architecture, classes, seed): the mean of the later pool's CKA minus the first's, the share of pairs
    lower, and a jackknife standard error over recipes (the pairs share teachers, so they are not
    independent samples and a per-pair interval would be too narrow)."""
    first = {_recipe(t): k for k, t in enumerate(teachers) if t["pool"] == 0}
    out = {}
    for p in sorted({t["pool"] for t in teachers} - {0}):
        later = {_recipe(t): k for k, t in enumerate(teachers) if t["pool"] == p}
        recipes = [r for r in later if r in first]
        m = len(recipes)
        if m < 3:  # a jackknife over fewer than 3 recipes says nothing
            out[f"{p} - 0"] = {"recipes": m, "mean": None}
            continue
        a, b = torch.tensor([first[r] for r in recipes]), torch.tensor([later[r] for r in recipes])
        diff = cka[b][:, b] - cka[a][:, a]
        off = ~torch.eye(m, dtype=torch.bool)
        leave_one_out = torch.stack([diff[keep][:, keep][off[1:, 1:]].mean()
                                     for keep in (torch.arange(m) != k for k in range(m))])
        se = ((m - 1) / m * (leave_one_out - leave_one_out.mean()).square().sum()).sqrt()
        out[f"{p} - 0"] = {"recipes": m, "pairs": m * (m - 1) // 2, "mean": diff[off].mean().item(),
                           "jackknife_se": se.item(), "share_lower": (diff[off] < 0).double().mean().item()}
    return out


def pools_cka(pools: Sequence[Pool], split: ImageSplit, images: int, seed: int, batch: int = 500,
              untrained: bool = False) -> dict:
    """Every teacher of `pools` on the same `images` of `split`: the teachers, the CKA matrix, its summary.
    `untrained`: each teacher's untrained twin instead (the scale: how alike the architectures alone make them)."""
    if sum(len(pool) for pool in pools) < 2:
        raise FastFreeError(f"CKA compares teachers, and {pools[0].path} holds one: pass a pool of at least 2 "
                            "teachers, or several --pool")
    idx = sample_images(split, images, seed)
    features, teachers = [], []
    for p, pool in enumerate(pools):
        x = pool.normalization(split.images[idx])
        for i, r in enumerate(pool.records):
            # each twin its own seed (its place among all pools' teachers): two pools' teachers of one
            # index are not one network
            model = untrained_twin(pool, i, split.device, len(teachers)) if untrained else pool.model(i, split.device)
            features.append(classifier_inputs(model, x, batch))
            teachers.append({"pool": p, "index": i, "arch": r.arch, "classes": list(r.classes), "seed": r.seed,
                             "features": features[-1].shape[1]})
    cka = linear_cka(features)
    return {"pools": [str(pool.path) for pool in pools], "split": split.name, "images": images, "seed": seed,
            "untrained": untrained, "teachers": teachers, "cka": [[round(v, 6) for v in row] for row in cka.tolist()],
            "summary": summarize(cka, teachers)}


def pyplot():
    """matplotlib's pyplot drawing to files only, or a refusal naming the install (asked before any work)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise FastFreeError(f"--png needs matplotlib ({e}): pip install -e \".[figures]\" (or pip install "
                            "matplotlib), or leave out --png") from None
    return plt


def draw_heatmap(result: dict, path: str | Path, title: str) -> None:
    """The CKA matrix as a heatmap (0..1), teachers grouped by pool and architecture, lines between groups."""
    plt = pyplot()
    teachers = result["teachers"]
    order = sorted(range(len(teachers)), key=lambda t: (teachers[t]["pool"], teachers[t]["arch"], t))
    cka = torch.tensor(result["cka"])[order][:, order]
    groups = [(teachers[t]["pool"], teachers[t]["arch"]) for t in order]
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    image = ax.imshow(cka.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="linear CKA")
    starts = [k for k in range(len(groups)) if k == 0 or groups[k] != groups[k - 1]]
    for k in starts[1:]:
        ax.axhline(k - 0.5, color="white", linewidth=0.8)
        ax.axvline(k - 0.5, color="white", linewidth=0.8)
    if len(starts) > 1:
        ends = starts[1:] + [len(groups)]
        several_pools = len({g[0] for g in groups}) > 1
        pool_names = [Path(path).name for path in result["pools"]]
        if len(set(pool_names)) < len(pool_names):  # folders of one name in different places
            pool_names = [f"{k}:{name}" for k, name in enumerate(pool_names)]
        names = [f"{pool_names[groups[s][0]]}: {groups[s][1]}" if several_pools else groups[s][1] for s in starts]
        centres = [(s + e - 1) / 2 for s, e in zip(starts, ends)]
        ax.set_xticks(centres, names, rotation=90)  # upright, small groups sit side by side
        ax.set_yticks(centres, names)
    else:
        from matplotlib.ticker import MaxNLocator
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))  # teacher indices, not 2.5
        ax.set_xlabel("teacher")
        ax.set_ylabel("teacher")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", action="append", required=True, help="a pool directory (repeat: pools of one data set)")
    p.add_argument("--split", choices=("train", "val", "test"), default="train",
                   help="the split whose images every teacher sees (train: the teachers' own classes among others)")
    p.add_argument("--images", type=int, default=1000,
                   help="images drawn from the split (default 1000; linear CKA reads high on a few hundred)")
    p.add_argument("--image-seed", type=int, default=0, help="which images (default 0)")
    p.add_argument("--untrained", action="store_true",
                   help="each teacher's architecture freshly initialised instead of its weights: the scale against "
                        "which the pool's CKA reads (how alike the architectures alone make the features)")
    p.add_argument("--png", help="also draw the heatmap to this PNG (needs matplotlib)")
    add_common_flags(p)
    args = p.parse_args(argv)
    if args.png:
        pyplot()  # a missing matplotlib refused now, not after the teachers have run
    preset, device, _ = setup(args)
    dataset, _ = load_on_device(data_config(args, preset), device)
    pools = [load_pool(path) for path in args.pool]
    for pool in pools:
        check_pool_fits(pool, dataset, "these images", "pass --data (and --data-root) of the pool's data set",
                        "pass --image-size {size}")
    split = {"train": dataset.train, "val": dataset.val, "test": dataset.test}[args.split]
    result = pools_cka(pools, split, args.images, args.image_seed, untrained=args.untrained)
    s = result["summary"]
    who = "untrained twins of " if args.untrained else ""
    print(f"{who}{len(result['teachers'])} teachers on {args.images} {split.name} images: mean CKA off the diagonal "
          f"{s['mean_off_diagonal']['mean']:.3f}", flush=True)
    for name, m in s["by_architecture_pair"].items():
        print(f"    {name}: {m['mean']:.3f} ({m['pairs']} pairs)", flush=True)
    if s["same_recipe_across_pools"]["pairs"]:
        m = s["same_recipe_across_pools"]
        print(f"    one recipe in two pools: {m['mean']:.3f} ({m['pairs']} pairs)", flush=True)
    for name, m in s["within_pool_change"].items():
        if m["mean"] is not None:
            print(f"    pool {name}, pairs of one recipe in both: {m['mean']:+.3f} +- {m['jackknife_se']:.3f} "
                  f"(jackknife se over {m['recipes']} recipes; {100 * m['share_lower']:.0f} % of pairs lower)",
                  flush=True)
    for arch, shared in s["by_shared_classes"].items():
        print(f"    {arch}, by classes shared: " + ", ".join(f"{k}: {m['mean']:.3f} ({m['pairs']})"
                                                          for k, m in shared.items()), flush=True)
    write_json(args.json, {"benchmark": "linear CKA between teachers' features (Appendix F)", "data": dataset.name,
                           **result, **run_metadata(device)})
    if args.png:
        draw_heatmap(result, args.png, f"linear CKA, {who}{len(result['teachers'])} teachers, "
                                       f"{args.images} {split.name} images")
    return 0


if __name__ == "__main__":
    exit_on_refusal(main)
