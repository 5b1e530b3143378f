"""A `fastfree train` run's meta-learner read back from its run directory (`fastfree eval --run`).

config.json records the data the run learned from, which fixes the learner's input space (its
image size and normalisation: the data set's, or for several domains the largest size and the
normalisation of the first domain at it, as in training); best_learner.pt holds the learners
selected on meta-val (one per shot count), checkpoint.pt the last one. So a run can be meta-tested again later on
more tasks, on meta-val, or on another data set, in the input space it was trained in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fastfree import __version__
from fastfree.commands.common import load_on_device, write_json
from fastfree.commands.train_domains import load_domains
from fastfree.config import get_preset
from fastfree.data.domains import MultiDomainData
from fastfree.data.sources import IMAGE_FOLDERS, DataConfig
from fastfree.data.split import FewShotDataset, Normalization
from fastfree.errors import FastFreeError
from fastfree.free.learner_file import LearnerCard, learner_module
from fastfree.free.run import CHECKPOINT, learner_init, load_checkpoint, selected_inits
from fastfree.free.selection import BEST, Selected, last_label, read_selected, selected_label
from fastfree.metatest.initializations import Initialization
from fastfree.metatest.protocol import MetaTestConfig
from fastfree.read_back import read_json

WHICH = ("selected", "last", "every")  # every: commands/every_learner.py
INPUT_SPACE = "input_space.json"  # the learner's image size and normalisation, written by `train`


@dataclass
class RunLearner:
    data: FewShotDataset | MultiDomainData | None  # the run's data (its splits); None when not loaded (eval --data)
    image_size: int  # the learner's input space: what it was trained on
    normalization: Normalization
    preset: str
    width: int
    learner: nn.Module | None  # None when only the run's shape is needed (a Random baseline)
    selected: dict  # per shot count, the learners selected on meta-val ({}: the last learner)
    label: str  # e.g. "FREE (selected on meta-val, iteration 50)"
    iteration: int | None  # of the last learner
    shots: tuple[int, ...] | None = None  # a run of one shot setting (train --shots K); None: the preset's
    ways: int | None = None  # the run's N (its pool's classes per teacher); None: unknown, the preset's

    def protocol(self) -> MetaTestConfig:
        """The run's meta-test protocol: its preset's, N-way as the run's learner, at the run's shot
        setting if it had one (as `train` meta-tested it)."""
        base = get_preset(self.preset).metatest
        base = base if self.ways is None else replace(base, ways=self.ways)
        return base if self.shots is None else replace(base, shots=self.shots)


def read_run_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not path.is_file():
        raise FastFreeError(f"no config.json in {run_dir}: --run takes the directory a `fastfree train` run wrote "
                            "(its --run-dir, by default runs/<preset>)")
    return read_json(path, "Restore it from a copy of the run: it holds the run's settings, which --resume, eval, "
                     "adapt and export read")


def read_input_space(run_dir: Path) -> dict | None:
    """input_space.json as `train` wrote it, or None for a run from before it."""
    path = Path(run_dir) / INPUT_SPACE
    if not path.is_file():
        return None
    return read_json(path, "Restore it from a copy of the run, or delete it: the learner's image size and "
                     "normalisation are then read from the run's data, and the next --resume writes it again")


def run_data_configs(config: dict, data_root: str | None = None, decoder: str | None = None) -> list[DataConfig]:
    """The run's data sets as training read them (pure): `data_root`: where its data lies now, if it
    moved (a run of one data set); `decoder`: how to read its image folders here, if not as training
    did (e.g. PIL where DALI is not installed)."""
    domains = [dict(d) for d in config["domains"]] if config.get("domains") else [dict(config["data"])]
    if decoder is not None:
        folders = [d for d in domains if d["source"] in IMAGE_FOLDERS]
        if not folders:
            raise FastFreeError(f"--decoder reads image folders; this run's data ({', '.join(d['source'] for d in domains)})"
                                " has none: drop --decoder")
        for d in folders:
            d["decoder"] = decoder
    if data_root is not None:
        if config.get("domains"):
            raise FastFreeError(f"--data-root moves a run's data set, but this run has {len(config['domains'])} "
                                "domains: restore them where config.json names them")
        if domains[0]["source"] == "builtin":
            raise FastFreeError("--data-root: this run's data is the built-in data set, which has no folder")
        domains[0]["root"] = str(data_root)
    return [DataConfig(**d) for d in domains]


def run_data(config: dict, device: torch.device, data_root: str | None = None,
             decoder: str | None = None) -> FewShotDataset | MultiDomainData:
    """The run's data, loaded as training loaded it (several domains: combined the same way); see
    run_data_configs for `data_root` and `decoder`."""
    configs = run_data_configs(config, data_root, decoder)
    if config.get("domains"):
        return load_domains(configs, device)
    return load_on_device(configs[0], device)[0]


def write_input_space(run_dir: Path, data: FewShotDataset | MultiDomainData, ways: int) -> None:
    """Record the learner's input space beside config.json, so its learners can be used without the
    run's data (`fastfree adapt`). Derived from the loaded data, so it is what training used; with the
    data sets' names and the learner's N (its outputs, the run's meta-test's N-way)."""
    names = [d.name for d in data.domains] if isinstance(data, MultiDomainData) else [data.name]
    write_json(run_dir / INPUT_SPACE, {"image_size": data.image_size, **data.normalization.to_dict(), "data": names,
                                       "ways": ways})


def run_ways(run_dir: Path) -> int | None:
    """The run's N: as `train` recorded it, or for a run from before that, its learners' outputs."""
    recorded = (read_input_space(run_dir) or {}).get("ways")
    if recorded:
        return int(recorded)
    if (run_dir / BEST).is_file():
        picks = read_selected(run_dir / BEST, "cpu")
        if picks:
            return int(next(iter(picks.values())).learner["classifier.weight"].shape[0])
    if (run_dir / CHECKPOINT).is_file():
        return int(last_learner(run_dir, "cpu")[0]["classifier.weight"].shape[0])
    return None


def run_input_space(run_dir: Path, config: dict, device: torch.device) -> tuple[int, Normalization]:
    """The image size and normalisation the run's learner was trained in: from input_space.json, or
    for a run from before it, from the run's data (which must then be where training found it)."""
    recorded = read_input_space(run_dir)
    if recorded is not None:
        return int(recorded["image_size"]), Normalization.from_dict(recorded)
    try:
        data = run_data(config, device)
    except FastFreeError as e:
        raise FastFreeError(f"{run_dir} has no {INPUT_SPACE} (it predates it), so its learner's image size and "
                            f"normalisation come from its data, which could not be read ({e}); restore the data where "
                            f"config.json names it, or write {run_dir / INPUT_SPACE} as {{\"image_size\": S, "
                            f"\"mean\": [r, g, b], \"std\": [r, g, b]}} (the data's)") from e
    return data.image_size, data.normalization


def last_learner(run_dir: Path, device: torch.device) -> tuple[dict, int]:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise FastFreeError(f"{run_dir} has no {CHECKPOINT}: the run has not completed a checkpointed iteration; "
                            "train it further, or use the learner selected on meta-val (--learner selected)")
    saved = load_checkpoint(run_dir)  # on the CPU: the bank and optimisers stay off the GPU
    return {k: v.to(device) for k, v in saved["learner"].items()}, int(saved["iteration"])


def read_run_selected(run_dir: Path, device: torch.device | str) -> dict[int | None, Selected]:
    """The run's learners selected on meta-val, per shot count; refused when there are none yet."""
    selected = read_selected(run_dir / BEST, device)
    if not selected:
        raise FastFreeError(f"{run_dir} has no {BEST} yet (it is written at the first meta-val evaluation after "
                            "warm-up): use its last learner (--learner last), or train further")
    return selected


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def shots_of_pick(selected: dict[int | None, Selected], key: int | None) -> tuple[int, ...] | None:
    """The shot counts whose pick is `key`'s learner (the same weights: one evaluation can win several);
    None for a legacy single pick, which serves every shot count."""
    if key is None:
        return None
    mine = selected[key].learner
    return tuple(sorted(k for k, v in selected.items() if _same_weights(v.learner, mine)))


def data_names(config: dict, run_dir: Path | None = None) -> tuple[str, ...]:
    """The names the run's data sets loaded under (an image folder's: its folder's), without loading them:
    as `train` recorded them in input_space.json, or for a run from before that, from config.json's roots
    (as typed: `--data-root .` names no folder, so such a root is resolved here, at best)."""
    recorded = None if run_dir is None else (read_input_space(run_dir) or {}).get("data")
    if recorded:
        return tuple(recorded)

    def name(d: dict) -> str:
        if d["source"] != "folder" or not d.get("root"):
            return d["source"]
        root = Path(d["root"])
        return root.name if root.name not in ("", ".", "..") else root.resolve().name

    return tuple(name(d) for d in (config.get("domains") or [config["data"]]))


def run_learner_card(run_dir: Path, config: dict, which: str, choose: Callable[[dict], int | None],
                     device: torch.device | str) -> tuple[dict, LearnerCard]:
    """A run's learner and its card: the last one, or the pick `choose(selected)` names among those
    selected on meta-val. The card says how the run adapts it (its protocol, its input space), so
    `adapt --run`, `export` and a learner file use one description."""
    if which == "last":
        state, iteration = last_learner(run_dir, device)
        shots, meta_val = None, None
    else:
        selected = read_run_selected(run_dir, device)
        key = choose(selected)
        pick = selected[key]
        state, iteration, shots = pick.learner, pick.iteration, shots_of_pick(selected, key)
        meta_val = ({"all shot counts (their mean)": pick.val} if shots is None
                    else {str(k): selected[k].val for k in shots})
    protocol = get_preset(config["preset"]).metatest
    image_size, normalization = run_input_space(run_dir, config, device)
    card = LearnerCard(
        architecture="conv4", width=int(config["free"]["learner_width"]),
        ways=int(state["classifier.weight"].shape[0]), image_size=image_size, mean=normalization.mean,
        std=normalization.std, steps=protocol.steps, lr=protocol.lr, queries=protocol.queries, which=which,
        shots=shots, iteration=iteration, meta_val=meta_val, preset=config["preset"], data=data_names(config, run_dir),
        source=Path(run_dir).resolve().name, fastfree_version=__version__)
    return state, card


def load_run_learner(run_dir: str | Path, which: str | None, device: torch.device,
                     dtype: torch.dtype = torch.float32, data_root: str | None = None, decoder: str | None = None,
                     with_data: bool = True) -> RunLearner:
    """The run's data (unless `with_data` is False: another data set is tested, in the learner's input
    space) and, unless `which` is None, its selected (per shot count) or last meta-learner."""
    if which not in (None, "selected", "last"):
        raise FastFreeError(f"unknown learner {which!r}: use selected or last")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    width = int(config["free"]["learner_width"])
    selected: dict = {}
    if which == "selected":
        selected = read_run_selected(run_dir, device)
        state, label, it = next(iter(selected.values())).learner, selected_label(selected), None
    elif which == "last":
        state, it = last_learner(run_dir, device)
        label = last_label(it)
    if with_data:
        data = run_data(config, device, data_root, decoder)
        image_size, normalization = data.image_size, data.normalization
    else:
        data, (image_size, normalization) = None, run_input_space(run_dir, config, device)
    shots = tuple(config["shots"]) if config.get("shots") else None
    if which is None:
        return RunLearner(data, image_size, normalization, config["preset"], width, None, {}, "Random", None, shots,
                          run_ways(run_dir))
    return RunLearner(data, image_size, normalization, config["preset"], width,
                      learner_module(state, width, image_size, device, dtype), selected, label, it, shots,
                      int(state["classifier.weight"].shape[0]))


def run_learner_init(target: RunLearner, shots: tuple[int, ...]) -> Initialization | dict[int, Initialization]:
    """The meta-test start: the last learner, or per shot count the one selected for it."""
    if target.selected:
        return selected_inits(target.learner, target.selected, shots)
    return learner_init(target.learner)


__all__ = ["INPUT_SPACE", "WHICH", "RunLearner", "data_names", "last_learner", "read_input_space", "read_run_selected",
           "run_learner_card", "shots_of_pick", "load_run_learner", "read_run_config", "run_ways",
           "run_data", "run_data_configs", "run_input_space", "run_learner_init", "write_input_space"]
