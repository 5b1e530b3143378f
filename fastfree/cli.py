"""The `fastfree` command line. Only commands that work exist."""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import math
import os
import sys
from pathlib import Path

from fastfree import __version__
from fastfree.config import PRESETS
from fastfree.data.sources import NORMALIZATIONS, SOURCES
from fastfree.device import ENGINES
from fastfree.errors import FastFreeError
from fastfree.folder_lock import held_until_done
from fastfree.graceful_stop import StoppedBySignal
from fastfree.out_of_memory import out_of_memory_message
from fastfree.commands.run_learner import WHICH
from fastfree.metatest.initializations import METHODS
from fastfree.models import ARCHITECTURES


def _int_at_least(low: int):
    """An argparse type: an integer >= low (its name shows in argparse's 'invalid ... value' message)."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be {'a positive integer' if low == 1 else f'an integer >= {low}'}"
                                             f", got {n}")
        return n

    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def _positive_real(value: str) -> float:
    """A finite number > 0 (float() alone takes 'nan' and 'inf', which train or adapt into NaNs silently)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return x


def _milestone(value: str) -> int | None:
    """A milestone epoch, or None for 'none' (no schedule)."""
    return None if value.lower() == "none" else _positive(value)


def add_machine_flags(p: argparse.ArgumentParser) -> None:
    """Where and how a command computes, and where its JSON goes (every command)."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="compute precision (float64 is for equivalence checks)")
    p.add_argument("--json", metavar="PATH", help="write machine-readable results to PATH")
    p.add_argument("--threads", type=_positive, help="CPU threads for torch (default: torch's choice)")


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Every command's flags: preset, device, dtype, JSON output, threads and the data set (also used by
    the profiling scripts, so they read data as the commands do)."""
    presets = "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
    p.add_argument("--preset", default="demo", choices=list(PRESETS), help=f"base configuration ({presets})")
    add_machine_flags(p)
    g = p.add_argument_group("data (override the preset)")
    g.add_argument("--data", choices=SOURCES, help="builtin (embedded, default), cifar-fs (pickles) or folder")
    g.add_argument("--data-root", metavar="PATH", help="folder of the cifar-fs pickles or of images/ + CSVs")
    g.add_argument("--image-size", type=_positive, help="image side in pixels (folder and builtin data)")
    g.add_argument("--images-per-class", type=_positive, help="builtin data: images rendered per class")
    g.add_argument("--normalization", choices=list(NORMALIZATIONS), help="folder data: mean/std to use")
    g.add_argument("--decoder", choices=["auto", "dali", "pil"], help="folder data: auto (DALI on a CUDA device when installed, else PIL), dali, pil; "
                        "with eval --run, how to read the run's own image folders here")


def _engine_flags(p: argparse.ArgumentParser, choose_engine: bool = True) -> None:
    """The engine and what the fast engine may use (train, profile run; bench compares both engines)."""
    f = p.add_argument_group("engine")
    if choose_engine:
        f.add_argument("--engine", default="fast", choices=["fast", "reference"],
                       help="fast (default): teachers stacked and BN-folded, FIVE and replay vmapped on CUDA "
                            "(looped on a CPU, where that is faster), pure inner loops; reference: the "
                            "paper-faithful sequential oracle. Both give the same run from the same seed")
    f.add_argument("--amp", action="store_true",
                   help="bf16 autocast for convolutions and matmuls (losses and optimiser state stay fp32)")
    f.add_argument("--compile", action="store_true", help="torch.compile FIVE's k-step epoch (fixed shapes)")
    f.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture FIVE's k-step epoch in one CUDA graph (default: on with CUDA)")
    f.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=None,
                   help="fused Triton losses (default: on with CUDA; --no-kernels: the torch losses)")
    f.add_argument("--teacher-map", choices=["vmap", "loop"],
                   help="how FIVE maps its teachers: vmap (one grouped kernel per layer; default with CUDA) or loop "
                        "(plain kernels; a CPU's default), with --compile one teacher's compiled gradient reused for "
                        "all. Replay's tasks stay vmapped on CUDA")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastfree",
        description="Data-free meta-learning (FREE, CVPR 2024): teacher pools, FREE training, meta-testing.",
    )
    parser.add_argument("--version", action="version", version=f"fastfree {__version__}")
    parser.set_defaults(argv=None)  # main() sets the command line as typed
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="train a pool of teachers (all at once with vmap on CUDA)",
                       description="Train P teachers, each on a random N-way task of the meta-train "
                                   "split (Conv4: Adam lr 0.01; ResNets: SGD lr 0.01, momentum 0.9, weight decay "
                                   "5e-4; batch 128, 60 epochs, clip 50, best held-out epoch).")
    add_common_flags(p)
    p.add_argument("--out", metavar="DIR", help="pool directory (default: pools/<preset>)")
    p.add_argument("--teachers", type=_positive, help="number of teachers P")
    p.add_argument("--ways", type=_positive, help="classes per teacher")
    p.add_argument("--arch", choices=list(ARCHITECTURES), help="teacher architecture")
    p.add_argument("--archs", nargs="+", choices=list(ARCHITECTURES), metavar="ARCH",
                   help="several teacher architectures: each teacher's is drawn uniformly from them (Table 4: "
                        "conv4 resnet10 resnet18; ResNets train with SGD momentum 0.9, weight decay 5e-4)")
    p.add_argument("--width", type=_positive, help="filters of the first stage (Conv4 default 32)")
    p.add_argument("--epochs", type=_positive)
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--lr", type=_positive_real, help="every teacher's learning rate (default: the preset's, 0.01)")
    p.add_argument("--lr-milestones", nargs="+", type=_milestone, metavar="EPOCH",
                   help="epochs after which the learning rate is multiplied by --lr-gamma, for every architecture "
                        "of this pool (default: the authors' MultiStepLR, Conv4 at 70, ResNets at 30 50 80); "
                        "'none': a constant rate, as pools from before the schedule trained (grow one with it)")
    p.add_argument("--lr-gamma", type=_positive_real, help="the schedule's factor at each milestone (default 0.2)")
    p.add_argument("--seed", type=_non_negative, help="seed of the teachers' classes, inits and data order")
    p.add_argument("--group-size", type=_positive, help="teachers trained together in one vmapped step")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted pretraining in --out (its finished teachers are kept), or grow the "
                        "pool there to --teachers with the flags it was trained with")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished pool in --out (without it, pretraining over one stops and says so; the "
                        "old pool stays until the new one is saved)")
    p.add_argument("--engine", default="auto", choices=list(ENGINES),
                   help="batched: vmap over teachers; reference: one teacher at a time; threads: the reference's "
                        "teachers side by side, one CPU thread each (the same teachers as reference at --threads 1); "
                        "auto (default): batched on CUDA, threads on a CPU with more than one thread, else reference")

    im = sub.add_parser("import-pool", help="models trained elsewhere (safetensors or state-dict checkpoints) as a pool",
                        description="Write a pool from classifiers trained elsewhere: fastfree's own layout or the "
                                    "FREE authors' Conv-4 (their network.py). The data flags name the data set the "
                                    "models learned from (its name, image size and normalisation are recorded).")
    add_common_flags(im)
    im.add_argument("models", nargs="+", metavar="MODEL",
                    help="model files (.safetensors, .pt, .pth, .bin: one state dict each) or folders of them")
    im.add_argument("--out", required=True, metavar="DIR", help="pool directory to write")
    im.add_argument("--arch", default="conv4", choices=list(ARCHITECTURES), help="the models' architecture")
    im.add_argument("--classes", metavar="JSON",
                    help="each model's class ids in the data's meta-train split: a list in the files' order or "
                         "{file name: ids}; lets replay merge shared classes and measures held-out accuracy")
    im.add_argument("--overwrite", action="store_true", help="replace a pool already in --out")

    e = sub.add_parser("eval", help="meta-test a method on N-way K-shot tasks",
                       description="Adapt each task's copy with SGD on the support set, predict the "
                                   "query set, report mean +- 1.96 std/sqrt(n) per shot count.")
    add_common_flags(e)
    e.add_argument("--method", required=True, choices=[*METHODS, "learner"],
                   help="random: a classifier from scratch per task; average: mean of the pool's "
                        "weights, fine-tuned; best-model: the pool's best held-out teacher, fine-tuned; "
                        "learner: the meta-learner of a `fastfree train` run (--run) or of a learner file "
                        "(--learner-file)")
    trained = e.add_mutually_exclusive_group()
    trained.add_argument("--run", metavar="RUN_DIR",
                         help="a `fastfree train` run directory: test its meta-learner (--method learner) or a Random "
                              "learner of its shape (--method random) on the run's data (all its domains; --data: one "
                              "data set) in the input space it was trained in, with the run's preset's protocol")
    trained.add_argument("--learner-file", metavar="FILE",
                         help="--method learner: the meta-learner of a `fastfree export` file, on the data the preset "
                              "and data flags name, seen in its input space, adapted as its run adapted")
    e.add_argument("--learner", choices=list(WHICH),
                   help="with --run: the learner selected on meta-val (default), the last one, or every one kept at a "
                        "meta-val evaluation, all on the same tasks (the best on meta-test is the published code's "
                        "selection: optimistic, beside meta-val's)")
    e.add_argument("--pool", metavar="DIR", help="pool directory for average/best-model (default: pools/<preset>)")
    e.add_argument("--split", default="test", choices=["test", "val"], help="meta-test or meta-val classes")
    e.add_argument("--tasks", type=_positive)
    e.add_argument("--ways", type=_positive)
    e.add_argument("--shots", type=_positive, nargs="+", help="one or more shot counts (default 1 5; with --run, a `train --shots K` run's K)")
    e.add_argument("--queries", type=_positive)
    e.add_argument("--steps", type=_non_negative, help="SGD steps on the support set (default 10)")
    e.add_argument("--lr", type=_positive_real, help="adaptation learning rate (default 0.01)")
    e.add_argument("--chunk", type=_positive, help="tasks adapted together (vmap)")
    e.add_argument("--seed", type=_non_negative, help="task seed: the same seed gives the same tasks")
    e.add_argument("--engine", choices=list(ENGINES),
                   help="batched: vmap over tasks; reference: one task at a time; threads: tasks side by side, "
                        "one torch thread each (the reference's values at 1 thread, bit for bit); auto (default): "
                        "batched on CUDA, on a CPU threads with --threads > 1, else reference (faster there)")
    e.add_argument("--arch", choices=list(ARCHITECTURES), help="random: the learner's architecture")
    e.add_argument("--width", type=_positive, help="random: the learner's width")
    e.add_argument("--per-task", action="store_true", help="also write every task's accuracy to --json "
                   "(with --learner every: of every learner, keyed by iteration)")

    ad = sub.add_parser("adapt", help="a run's meta-learner on a task of your own: folders of images",
                        description="Adapt a `fastfree train` run's meta-learner to a few labelled images per class "
                                    "(--support: one sub-folder per class) as the meta-test adapts, and classify "
                                    "--query's images (a folder of images, or of class sub-folders: accuracy too).")
    src = ad.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="a `fastfree train` run directory")
    src.add_argument("--learner-file", metavar="FILE",
                     help="a learner file written by `fastfree export` (no run directory needed)")
    ad.add_argument("--support", required=True, metavar="DIR", help="one sub-folder of images per class")
    ad.add_argument("--query", required=True, metavar="DIR",
                    help="images to classify, or sub-folders named as the support's classes (labelled)")
    ad.add_argument("--learner", choices=["selected", "last"],
                    help="--run: the learner selected on meta-val for the shot count nearest the support's (default), "
                         "or the last one")
    ad.add_argument("--out", metavar="CSV", help="write every query image's prediction and class probabilities")
    ad.add_argument("--steps", type=_non_negative, help="SGD steps on the support set (default: the run's protocol, 10)")
    ad.add_argument("--lr", type=_positive_real, help="adaptation learning rate (default: the run's protocol, 0.01)")
    ad.add_argument("--bn-stats", default="query", choices=["query", "support"],
                    help="BatchNorm statistics for the prediction: the query images' together (default; the "
                         "meta-test protocol: predictions depend on the other query images) or the support set's "
                         "(each image predicted on its own)")
    ad.add_argument("--chunk", type=_positive, default=512,
                    help="query images per forward pass (bounds memory); a larger query set under --bn-stats query "
                         "gets the whole set's statistics a chunk at a time (default 512)")
    ad.add_argument("--compare-random", action="store_true",
                    help="also adapt a Random learner of the same shape on the task (the tables' baseline)")
    ad.add_argument("--seed", type=_non_negative, default=0, help="--compare-random: the Random learner's seed")
    add_machine_flags(ad)

    ex = sub.add_parser("export", help="a run's meta-learner as one portable safetensors file",
                        description="Write a `fastfree train` run's meta-learner (selected on meta-val, or the last) "
                                    "as safetensors, with a card in its metadata (shape, input space, the run's "
                                    "adaptation): `fastfree adapt --learner-file` and "
                                    "`fastfree.free.learner_file.load_learner` use it without the run directory.")
    ex.add_argument("--run", required=True, metavar="RUN_DIR", help="a `fastfree train` run directory")
    ex.add_argument("--out", required=True, metavar="FILE.safetensors", help="the file to write")
    ex.add_argument("--learner", default="selected", choices=["selected", "last"],
                    help="the learner selected on meta-val (default) or the last one")
    ex.add_argument("--shots", type=_positive,
                    help="the shot count whose meta-val pick to export (needed when the picks differ)")
    ex.add_argument("--json", metavar="PATH", help="write machine-readable results to PATH")

    t = sub.add_parser("train", help="run FREE end to end (pool if needed, Algorithm 3, meta-test)",
                       description="FREE (CVPR 2024): FIVE + BELL + cross-task replay, model selection on "
                                   "meta-val, meta-test of the selected and the last meta-learner. Writes a run "
                                   "directory with config, metrics, checkpoints, grids and a results table.")
    add_common_flags(t)
    t.add_argument("--pool", metavar="DIR", action="append",
                   help="teacher pool (default: pretrain one into RUN_DIR/pool); repeat it, one per --domain and "
                        "in the same order, for a multi-domain run")
    t.add_argument("--domain", metavar="SPEC", action="append",
                   help="one domain of a multi-domain run (Table 3), repeated: SOURCE[:ROOT][,size=N][,seed=N]"
                        "[,images=N][,norm=NAME], e.g. --domain builtin --domain cifar-fs:/data/cifar-fs; "
                        "replaces the preset's domains (size: builtin and image folders; seed, images: builtin; "
                        "norm: the folder layout)")
    t.add_argument("--run-dir", metavar="DIR", help="run directory (default: runs/<preset>)")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint, to its own --iterations; with another "
                        "--iterations, lengthen a run (finished or not; the old end's results files are kept as "
                        "results-<N>it.* and results_per_task-<N>it.json)")
    t.add_argument("--iterations", type=_positive, help="outer iterations of Algorithm 3")
    t.add_argument("--warmup", type=_non_negative, help="warm-up iterations (generator only)")
    t.add_argument("--teachers-per-iteration", type=_positive, help="b: teachers sampled per iteration")
    t.add_argument("--k", type=_non_negative, help="FIVE inner steps (5: FREE_5, 2: FREE_2; 0: no per-teacher "
                                                   "adaptation, the meta-generator's own images)")
    t.add_argument("--seed", type=_non_negative, help="seed of the generator, the meta-learner and the training's random "
                                            "draws (teachers, latent codes, augmentation, replay tasks); meta-val and meta-test tasks "
                                            "have their own fixed seed, so runs of any seed meet the same tasks")
    t.add_argument("--eval-every", type=_positive, help="meta-val evaluation interval (model selection)")
    t.add_argument("--val-tasks", type=_positive, help="meta-val tasks per evaluation (their seed is fixed: every "
                                                       "evaluation and every run meets the same tasks)")
    t.add_argument("--test-tasks", type=_positive, help="meta-test tasks at the end")
    t.add_argument("--eval-chunk", type=_positive,
                   help="meta-val and meta-test tasks adapted together (default 50): fewer need less memory and "
                        "meet the same tasks; not part of the run's configuration, so it may change on --resume")
    t.add_argument("--checkpoint-every", type=_positive,
                   help="iterations between checkpoints (default: the preset's, 10; the demo 5): a stop by an error "
                        "or a kill loses at most this many, Ctrl-C / SIGTERM none. It may change on --resume "
                        "(it changes no result); without it a resumed run keeps its own")
    t.add_argument("--memory-per-class", type=_positive,
                   help="recovered images the memory bank keeps per class for cross-task replay (first in, first "
                        "out; default 400, the published code's): fewer need less memory and smaller checkpoints "
                        "(the bank is classes x N images: ~0.3 GB for CIFAR-FS, ~2.2 GB for miniImageNet at 84 px)")
    t.add_argument("--shots", type=_positive,
                   help="this run's shot setting, as the paper runs each one (the published code's num_sup_train = "
                        "num_sup_test): replay K-shot tasks, select on and meta-test K-shot tasks. Default: one run "
                        "for the preset's shot counts (1 and 5), replaying 1-shot tasks")
    a = t.add_argument_group("ablations (Tables 5 and 7) and variants")
    a.add_argument("--generator", choices=["meta", "sequential"],
                   help="meta: FIVE's meta-generator (default); sequential: Table 5's baseline generator")
    a.add_argument("--learner-update", choices=["bell", "erm", "none"],
                   help="bell (default), erm (Table 5's ERM row) or none (replay only, Table 5's baseline)")
    a.add_argument("--bell-outer", choices=["interpolate", "adam"],
                   help="interpolate: theta += eps (theta_tilde - theta) as Algorithm 2 (default); "
                        "adam: the published code's persistent Adam fed 67 (theta - theta_tilde)")
    a.add_argument("--bell-inner", choices=["adam", "sgd"],
                   help="the clone's steps in BELL: adam, Adam(1e-3) as the published code and Appendix A's "
                        "'similarly' (default); sgd: theta_tilde -= alpha g, Algorithm 2 line 6 read literally")
    a.add_argument("--targets", choices=["soft", "hard"], help="soft: distillation (default); hard: Table 7's ablation")
    a.add_argument("--generator-optimizer", choices=["persistent", "fresh"],
                   help="persistent: one Adam for the meta-generator across iterations (default); fresh: a new "
                        "Adam every iteration, as the published code (each step a sign step of size gamma)")
    a.add_argument("--bell-augment", action="store_true",
                   help="distil on a crop + flip of the recovered images (one draw for the b tasks), as the "
                        "published code does; the paper does not say (default: as recovered)")
    a.add_argument("--no-replay", action="store_true", help="switch cross-task replay off")
    a.add_argument("--replay-first-order", action="store_true", help="first-order MAML in replay (default second)")
    _engine_flags(t)

    pr = sub.add_parser("profile", help="operation counts and profiles (table1: the paper's Table 1; run: a FREE iteration)",
                        description="Count and profile. `table1` regenerates the paper's Table 1 on a CPU in "
                                    "seconds (shapes only, on the meta device).")
    prs = pr.add_subparsers(dest="profile_command", required=True, metavar="WHAT")
    p1 = prs.add_parser("table1", help="Table 1: GFLOPs of one image, paper vs recount vs true fwd+bwd",
                        description="Conv-4, ResNet-18, ResNet-50 at 32/84/224 px: the paper's value, 2 x thop "
                                    "MACs of one forward on the authors' models (the paper's convention), and "
                                    "FlopCounterMode forward / forward+backward on fastfree's models. Markdown "
                                    "on stdout.")
    p1.add_argument("--json", metavar="PATH", help="write machine-readable results to PATH")
    p2 = prs.add_parser("run", help="profile a few FREE iterations: time, FLOPs, MFU per phase, GPU-hours",
                        description="Per phase (FIVE, meta-generator, bank, alignment, BELL, replay, meta-test): "
                                    "device time (CUDA events; wall time on a CPU), FLOPs (FlopCounterMode on one "
                                    "eager iteration), TFLOP/s and MFU against the device's peak for the precision "
                                    "in use, the full protocol's data-recovery device-hours, peak memory and NVML "
                                    "telemetry (absent without a GPU). Markdown on stdout.")
    add_common_flags(p2)
    p2.add_argument("--pool", metavar="DIR", help="teacher pool (default: freshly initialised teachers of the "
                                                  "preset's pool; time and FLOPs do not depend on the weights)")
    p2.add_argument("--iterations", type=_positive, default=3, help="timed iterations (default 3, after 2 untimed)")
    p2.add_argument("--metatest-tasks", type=_positive, default=20, help="meta-test tasks timed per shot count")
    p2.add_argument("--teachers-per-iteration", type=_positive, help="b: teachers sampled per iteration")
    p2.add_argument("--k", type=_positive, help="FIVE inner steps")
    p2.add_argument("--peak-tflops", type=_positive_real, help="the device's peak for MFU (default: from the built-in table)")
    p2.add_argument("--trace", metavar="PATH", help="also write a torch.profiler Chrome trace of one iteration")
    _engine_flags(p2)

    c = sub.add_parser("compare", help="train runs side by side: flags that differ, meta-val, meta-test (task by "
                                       "task where the tasks are the same), time",
                       description="Reads what `fastfree train` wrote in each run directory (config.json, "
                                   "metrics.jsonl, results.json, results_per_task.json) and lines the runs up: the "
                                   "flags that differ from the first run, meta-val curves, meta-test, iteration time, "
                                   "and where two runs met the same tasks their difference task by task (a paired "
                                   "95%% interval, far narrower than the two side by side). Not a test: it reports.")
    c.add_argument("runs", nargs="+", type=Path, help="`fastfree train` run directories (the first is the baseline)")
    c.add_argument("--name", action="append", help="a name per run, in order (default: the folders' names)")
    c.add_argument("--at", type=_positive, help="compare the runs as they were at this many iterations (a lengthened "
                                                "run keeps each earlier end's meta-test); default: each run's last")
    c.add_argument("--val-every", action="append", type=Path, default=[], metavar="JSON",
                   help="per-task meta-val of a run from before runs stored it: the JSON of `fastfree eval --run RUN "
                        "--method learner --learner every --split val --tasks N --per-task --json F` (repeat per run)")
    c.add_argument("--average-seeds", action="store_true",
                   help="also group the runs that differ only in --seed and compare the groups, each one's learners "
                        "averaged per meta-test task (and meta-val task) over its seeds (one seed is one draw)")
    c.add_argument("--what", default="", help="the question the comparison answers (recorded in the JSON)")
    c.add_argument("--json", metavar="PATH", help="write the comparison here")

    st = sub.add_parser("status", help="where a train run or a pool stands: running or not, iterations, pace and "
                                       "time left, meta-val, results, the command that continues it",
                        description="Reads a `fastfree train` run folder (or a pool folder) as it is now, while a "
                                    "command works in it or after; takes no lock and writes nothing. A run: whether a "
                                    "command is running in it, iterations logged and checkpointed out of its total, "
                                    "its pace and the time left, meta-val's last evaluation and picks, a finished "
                                    "run's meta-test, and the command that continues or lengthens it. A pool: its "
                                    "finished teachers (and those paused mid-way) and their held-out accuracy.")
    st.add_argument("folders", nargs="*", type=Path, metavar="FOLDER",
                    help="run folders (`fastfree train --run-dir`, default runs/<preset>) or pool folders (default: "
                         "every one under ./runs and ./pools)")
    st.add_argument("--json", metavar="PATH", help="write what it reports here too")

    b = sub.add_parser("bench", help="reference vs fast engine side by side (FIVE, iteration, pool, meta-test)",
                       description="Times the reference and the fast engine in one run on one device: one FIVE "
                                   "epoch, one whole FREE iteration (with each phase's share), pool pretraining "
                                   "and meta-test adaptation. Medians over --repeats after a warm-up, ratios, "
                                   "device name and versions. Not a test: it reports.")
    add_common_flags(b)
    b.add_argument("--only", nargs="+", choices=["five", "iteration", "pool", "metatest"],
                   help="run only these sections (default: all)")
    b.add_argument("--repeats", type=_positive, default=3, help="timed repeats per variant (default 3)")
    b.add_argument("--fast-only", action="store_true",
                   help="with --only iteration: time the fast engine alone (another variant on a device whose "
                        "reference an earlier call timed; no ratio)")
    b.add_argument("--teachers-per-iteration", type=_positive, help="b: teachers per FIVE epoch / iteration")
    b.add_argument("--k", type=_positive, help="FIVE inner steps")
    b.add_argument("--generator", choices=["meta", "sequential"], default="meta",
                   help="the iteration's generator: meta (FIVE's, default) or sequential (Table 5's baseline: "
                        "the teachers one after another, each from the previous one's generator)")
    b.add_argument("--pool-teachers", type=_positive, help="teachers in the pool benchmark (default: the preset's)")
    b.add_argument("--pool-steps", type=_positive, default=5, help="optimiser steps in the pool benchmark")
    b.add_argument("--metatest-tasks", type=_positive, default=20, help="tasks per shot count in the meta-test benchmark")
    _engine_flags(b, choose_engine=False)
    return parser


# what each command writes: (attribute, flag, "file" or "folder"); a file's folder is created if absent
OUTPUTS = {
    "pretrain": [("out", "--out", "folder")], "import-pool": [("out", "--out", "folder")],
    "train": [("run_dir", "--run-dir", "folder")], "adapt": [("out", "--out", "file")],
    "export": [("out", "--out", "file")], "profile": [("trace", "--trace", "file")],
}


# what marks a folder as the command's own (one it may continue or replace): a pool, an interrupted
# pretraining, a run's files (the modules' constants, tested equal; literal here so the check runs before
# any of them is imported). A non-empty folder with none of them is somebody else's.
OWN_ENTRIES = {  # a pool's two files, also as written before their rename (a kill mid-write)
    "pretrain": ("manifest.json", "weights.safetensors", ".progress", "manifest.json.tmp", "weights.safetensors.tmp"),
    "import-pool": ("manifest.json", "weights.safetensors", "manifest.json.tmp", "weights.safetensors.tmp"),
    "train": ("config.json", "checkpoint.pt", "metrics.jsonl", "pool", "pools.json", "input_space.json",
              "learners", "best_learner.pt", "results.json"),
}
# a multi-domain run's own pools (pool-0-cifar-fs, ...: pretrained before its config.json is written), as
# folders of that name holding a pool or an interrupted pretraining
OWN_POOL_FOLDERS = {"train": "pool-[0-9]*-*"}
# what another command's folder is, for the refusal: (a name it holds, what it is)
FOLDER_KINDS = (("manifest.json", "a pool"), (".progress", "an interrupted pretraining"),
                ("config.json", "a run (fastfree train)"), ("checkpoint.pt", "a run (fastfree train)"))


def check_output_files(args) -> None:
    """Refuse, before any work, an output the command could not write at its end (after hours, for
    `eval --learner every`): a folder where a file goes or the reverse, a parent that is a file, a
    place this user cannot write."""
    outputs = [("json", "--json", "file"), *OUTPUTS.get(args.command, [])]
    files = [Path(getattr(args, a)).resolve() for a, _, k in outputs if k == "file" and getattr(args, a, None)]
    if len(set(files)) < len(files):  # adapt --out p.csv --json p.csv: the JSON replaced the CSV
        raise FastFreeError(f"two outputs name one file ({', '.join(sorted({str(f) for f in files if files.count(f) > 1}))})"
                            ": give each its own")
    for attr, flag, kind in outputs:
        value = getattr(args, attr, None)
        if value is None:
            continue
        path = Path(value)
        if kind == "file" and path.is_dir():
            raise FastFreeError(f"{flag} {value} is a directory: give the file to write (a path inside it, or another)")
        if kind == "folder" and path.exists() and not path.is_dir():
            raise FastFreeError(f"{flag} {value} is a file: give a folder (new, or the one to continue)")
        if kind == "folder" and path.is_dir():
            _refuse_somebody_elses_folder(path, flag, value, OWN_ENTRIES.get(args.command, ()),
                                          OWN_POOL_FOLDERS.get(args.command))
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise FastFreeError(f"{flag} {value}: {blocking} is a file, not a folder: choose another path")
        writes_in = path if kind == "folder" and path.is_dir() else next(p for p in path.parents if p.is_dir())
        if not os.access(writes_in, os.W_OK | os.X_OK):
            raise FastFreeError(f"{flag} {value}: {writes_in} is not writable for this user: choose another path")


def _refuse_somebody_elses_folder(path: Path, flag: str, value: str, own: tuple[str, ...],
                                  pool_folders: str | None) -> None:
    """`pretrain --out ~/pools` wrote its pool among the other pools' folders; `train --run-dir .` its
    run among a project's files. Hidden entries (.git, .DS_Store) do not count."""
    if not own or any((path / name).exists() for name in own):
        return
    entries = [e.name for e in path.iterdir()]
    if pool_folders and any(fnmatch.fnmatch(name, pool_folders) and ((path / name / "manifest.json").is_file()
                                                                       or (path / name / ".progress").is_dir())
                            for name in entries):
        return
    others = sorted(name for name in entries if not name.startswith("."))
    if not others and ".progress" not in entries:
        return
    kind = next((what for name, what in FOLDER_KINDS if name in entries), None)
    if kind is not None:  # another command's folder: train --run-dir POOL, pretrain --out RUN
        raise FastFreeError(f"{flag} {value} holds {kind}, not what this command writes: give a new or empty folder "
                            f"(e.g. {path / 'NAME'})")
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    raise FastFreeError(f"{flag} {value} already holds other files ({shown}) and nothing of fastfree's: its files "
                        f"would be written among them; give a new or empty folder (e.g. {path / 'NAME'})")


def interrupt_hint(args) -> str:
    """What to run after Ctrl-C: nothing finished is lost where the command keeps progress."""
    if args.command == "pretrain":
        out = Path(args.out or PRESETS[args.preset].pool_dir)
        if (out / ".progress").is_dir():
            return "; run the same command with --resume to keep the teachers it finished"
        return "; no teacher had finished: run the same command again"
    if args.command == "train":
        from fastfree.free.run import CHECKPOINT, default_run_dir

        if (default_run_dir(args.run_dir, args.preset) / CHECKPOINT).is_file():
            return "; run the same command with --resume to continue from its last checkpoint"
        return ("; it had no checkpoint yet: run the same command again (its own pool's finished teachers are "
                "kept)")
    if args.command == "eval" and getattr(args, "learner", None) == "every" and args.run:
        from fastfree.commands.every_learner_progress import FOLDER

        kept = Path(args.run) / FOLDER
        if kept.is_dir():
            return f"; run the same command again: it continues from the learners it could keep in {kept}"
    return ""


# Each subcommand's module; each has run(args).
COMMAND_MODULES = {
    "pretrain": "fastfree.commands.pretrain",
    "import-pool": "fastfree.commands.import_pool",
    "adapt": "fastfree.commands.adapt",
    "export": "fastfree.commands.export",
    "eval": "fastfree.commands.evaluate",
    "train": "fastfree.commands.train",
    "profile": "fastfree.commands.profile",
    "compare": "fastfree.profiling.compare_runs",
    "status": "fastfree.commands.status",
    "bench": "fastfree.commands.bench",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: `train` records it for `fastfree status`
    try:
        check_output_files(args)
        # Imported on demand: the fast engine, the Triton kernels and the profilers load only
        # for the commands that use them. The run or pool folder a command locks (folder_lock.hold)
        # is released when it returns, however it ends.
        with held_until_done(args.command, args.argv):
            importlib.import_module(COMMAND_MODULES[args.command]).run(args)
    except FastFreeError as e:
        print(f"fastfree {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not about a path of the user's: a bug, with its traceback
            raise
        where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
        print(f"fastfree {args.command}: error: {e.strerror or e} ({where}): check the path and its permissions",
              file=sys.stderr)
        return 2
    except StoppedBySignal as e:  # asked to stop: the loop saved what it had done where it stopped
        print(f"fastfree {args.command}: {e}: {e.then}", file=sys.stderr)
        return e.exit_code
    except (MemoryError, RuntimeError) as e:  # out of memory: the phase and the flags that need less
        message = out_of_memory_message(e, args)
        if message is None:  # any other error is a bug: its traceback
            raise
        print(f"fastfree {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfastfree {args.command}: interrupted{interrupt_hint(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
