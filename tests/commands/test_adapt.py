"""`fastfree adapt`: a run's meta-learner on a task given as folders of images gives what the meta-test
gives on the same task; unlabelled queries, smaller tasks, the Random comparison; bad folders name the fix."""

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from fastfree.cli import main
from fastfree.commands.run_learner import INPUT_SPACE, load_run_learner, read_run_config, run_data, \
    run_learner_init
from fastfree.data.episodes import EpisodeSampler, EpisodeSpec
from fastfree.metatest.adapt import adapted_query_logits_reference
from fastfree.metatest.protocol import run_metatest

CPU = torch.device("cpu")


def _png(image: torch.Tensor, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)  # PNG: lossless, the same uint8 back


def _write_task(run_dir, root, shots: int, ways: int = 5, labelled: bool = True):
    """Task 0 of the run's meta-test split (seed 0, as `eval` draws it) as folders; class folders named so
    that their sorted order is the task's label order. Returns the sampler."""
    data = run_data(read_run_config(run_dir), CPU)
    sampler = EpisodeSampler(data.test, data.normalization, EpisodeSpec(ways, shots, 15), seed=0)
    classes, s_idx, q_idx = sampler.task_indices(0)
    names = [f"{i}_class{int(c)}" for i, c in enumerate(classes)]
    for n, i in enumerate(s_idx):
        _png(data.test.images[i], root / "support" / names[n // shots] / f"{n:03d}.png")
    for n, i in enumerate(q_idx):
        folder = root / "query" / names[n // 15] if labelled else root / "query"
        _png(data.test.images[i], folder / f"{n:03d}.png")
    return sampler


def _adapt(tmp_path, run_dir, *extra) -> dict:
    out = tmp_path / "a.json"
    assert main(["adapt", "--run", str(run_dir), "--support", str(tmp_path / "support"), "--query",
                 str(tmp_path / "query"), "--device", "cpu", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("shots", [1, 5])
def test_adapt_gives_the_meta_tests_result_on_the_same_task(one_pick_run, tmp_path, shots):
    run_dir, _ = one_pick_run
    sampler = _write_task(run_dir, tmp_path, shots)
    got = _adapt(tmp_path, run_dir, "--dtype", "float64")
    target = load_run_learner(run_dir, "selected", CPU, torch.float64)
    init = run_learner_init(target, (shots,))[shots]
    # the meta-test's own accuracy on this task, through its own path (sampler, normalisation, protocol)
    [result] = run_metatest(init, target.data.test, target.normalization,
                            replace(target.protocol(), tasks=1, shots=(shots,)), torch.float64)
    assert got["accuracy"] == pytest.approx(result.accuracies[0] * 1.0)
    batch = sampler.batch([0], torch.float64)
    probs = adapted_query_logits_reference(init.template.double(), init.for_tasks([0], CPU, torch.float64), batch,
                                           10, 0.01)[0].softmax(-1)
    assert torch.allclose(torch.tensor([p["probabilities"] for p in got["predictions"]], dtype=torch.float64),
                          probs, rtol=0, atol=1e-10)
    # this copy's 1- and 5-shot picks are one learner (the same weights), and the label says so
    assert "selected on meta-val for 1- and 5-shot tasks" in got["learner"]
    assert got["shots_per_class"] == [shots] * 5 and got["ways"] == got["learner_ways"] == 5
    assert [p["label"] for p in got["predictions"]] == [got["classes"][i] for i in batch.query_labels[0].tolist()]
    assert got["image_size"] == target.image_size and got["random"] is None


def test_unlabelled_query_csv_and_random_comparison(run, tmp_path, capsys):
    run_dir, _ = run
    _write_task(run_dir, tmp_path, 1, labelled=False)
    got = _adapt(tmp_path, run_dir, "--out", str(tmp_path / "p.csv"), "--compare-random", "--learner", "last")
    assert got["accuracy"] is None and got["per_class_accuracy"] is None and got["learner"].startswith("FREE (last")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 75 and "label" not in rows[0]
    for row, pred in zip(rows, got["predictions"]):
        probs = [float(row[f"p({c})"]) for c in got["classes"]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5) and row["predicted"] == got["classes"][int(np.argmax(probs))]
        assert row["file"] == pred["file"]
    assert "accuracy" not in got["random"] and len(got["random"]["probabilities"]) == 75
    again = _adapt(tmp_path, run_dir, "--compare-random", "--learner", "last")
    assert again["random"]["probabilities"] == got["random"]["probabilities"]  # seeded
    own = _adapt(tmp_path, run_dir, "--learner", "last", "--bn-stats", "support")
    assert own["bn_stats"] == "support" and got["bn_stats"] == "query"
    assert [p["probabilities"] for p in own["predictions"]] != [p["probabilities"] for p in got["predictions"]]
    assert "predictions: " in capsys.readouterr().out


def test_a_smaller_task_uses_the_first_outputs_and_random_is_compared(run, tmp_path, capsys):
    run_dir, _ = run
    _write_task(run_dir, tmp_path, 1, ways=3)
    got = _adapt(tmp_path, run_dir, "--compare-random")
    assert got["ways"] == 3 and got["learner_ways"] == 5
    assert all(len(p["probabilities"]) == 3 for p in got["predictions"])
    assert 0 <= got["random"]["accuracy"] <= 100 and set(got["per_class_accuracy"]) == set(got["classes"])
    out = capsys.readouterr().out
    assert "first 3 of 5 outputs" in out and "Random, adapted the same way" in out
    assert "... 25 more: --out FILE.csv" in out  # 45 queries, 20 shown
    assert "note: BatchNorm" not in out  # as many query images as the protocol's 3 x 15
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted((tmp_path / "query").rglob("*.png"))[:2]:
        shutil.copy(f, few / f"{f.parent.name}_{f.name}")
    assert main(["adapt", "--run", str(run_dir), "--support", str(tmp_path / "support"), "--query", str(few),
                 "--device", "cpu"]) == 0
    assert "these 2 query images' own statistics" in capsys.readouterr().out


def test_the_input_space_is_recorded_and_older_runs_read_their_data(run, tmp_path, monkeypatch):
    run_dir, _ = run
    recorded = json.loads((run_dir / INPUT_SPACE).read_text())
    data = run_data(read_run_config(run_dir), CPU)
    assert recorded == {"image_size": data.image_size, **data.normalization.to_dict(), "data": [data.name], "ways": 5}
    _write_task(run_dir, tmp_path, 1)
    older = tmp_path / "older"
    shutil.copytree(run_dir, older)
    (older / INPUT_SPACE).unlink()
    with_data = _adapt(tmp_path, older, "--dtype", "float64")
    import fastfree.commands.run_learner as run_learner

    def no_data(*_):
        raise AssertionError("the data was read although input_space.json records the input space")

    monkeypatch.setattr(run_learner, "run_data", no_data)
    without = _adapt(tmp_path, run_dir, "--dtype", "float64")
    assert without["predictions"] == with_data["predictions"]


def test_the_data_names_are_the_loaded_ones_not_the_root_as_typed(tmp_path, monkeypatch):
    """`train --data folder --data-root .` stored the root as typed: its name was '' and `adapt --run` and
    `export` stopped on the learner card. train records the loaded names; older runs resolve such a root."""
    from fastfree.commands.run_learner import data_names

    config = {"data": {"source": "folder", "root": "."}}
    (tmp_path / "my-images").mkdir()
    monkeypatch.chdir(tmp_path / "my-images")
    assert data_names(config, tmp_path) == ("my-images",)  # a run from before input_space.json recorded them
    assert data_names({"data": {"source": "folder", "root": "../my-images"}}) == ("my-images",)
    assert data_names({"data": {"source": "builtin", "root": None}}) == ("builtin",)
    (tmp_path / INPUT_SPACE).write_text(json.dumps({"image_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1],
                                                    "data": ["photos"]}))
    assert data_names(config, tmp_path) == ("photos",)


def test_bad_tasks_name_the_fix(run, tmp_path, capsys):
    run_dir, _ = run
    _write_task(run_dir, tmp_path, 1, ways=5)
    sup, query = tmp_path / "support", tmp_path / "query"
    classes = sorted(p.name for p in sup.iterdir())

    def fails(message, support=sup, q=query, *extra):
        assert main(["adapt", "--run", str(run_dir), "--support", str(support), "--query", str(q), "--device", "cpu",
                     *extra]) == 2, message
        assert message in capsys.readouterr().err

    fails("no config.json in", sup, query, "--run", str(tmp_path))
    fails("--support", tmp_path / "nothing")
    with pytest.raises(SystemExit):  # refused as the flags are read (tests/test_cli.py)
        main(["adapt", "--run", str(run_dir), "--support", str(sup), "--query", str(query), "--steps", "-1"])
    assert "--steps: must be an integer >= 0, got -1" in capsys.readouterr().err
    one = tmp_path / "one"
    shutil.copytree(sup / classes[0], one / classes[0])
    fails("at least 2 classes", one)
    six = tmp_path / "six"
    shutil.copytree(sup, six)
    shutil.copytree(sup / classes[0], six / "extra")
    fails("give at most 5 class folders", six)
    loose = tmp_path / "loose"
    shutil.copytree(sup, loose)
    shutil.copy(next((sup / classes[0]).iterdir()), loose / "stray.png")
    fails("move each image into its class's folder", loose)
    (loose / "stray.png").unlink()
    (loose / classes[1] / "notes.txt").write_text("x")
    fails("not named as an image, e.g. notes.txt", loose)
    (loose / classes[1] / "notes.txt").unlink()
    (loose / classes[1] / ".DS_Store").write_text("x")  # hidden files are skipped
    (loose / classes[2] / "broken.png").write_bytes(b"not a png")
    fails("cannot decode image", loose)
    (loose / classes[2] / "broken.png").unlink()
    (loose / classes[2] / "gone.png").symlink_to(tmp_path / "nowhere.png")
    fails("broken link(s) gone.png point to nothing", loose)
    (loose / classes[2] / "gone.png").unlink()
    (loose / classes[2] / "deeper").mkdir()
    fails("images are read from the class folder itself", loose)
    (loose / classes[2] / "deeper").rmdir()
    (tmp_path / "noquery").mkdir()
    fails("holds no images: add the images to classify", sup, tmp_path / "noquery")
    empty = tmp_path / "empty"
    shutil.copytree(sup, empty)
    shutil.rmtree(empty / classes[3])
    (empty / classes[3]).mkdir()
    fails("holds no images", empty)
    odd = tmp_path / "oddquery"
    shutil.copytree(query, odd)
    (odd / classes[0]).rename(odd / "unknown")
    fails("are not classes of the support set", sup, odd)
    shutil.copy(next((sup / classes[0]).iterdir()), odd / "loose.png")
    fails("mixes class folders and loose files", sup, odd)
    assert main(["adapt", "--run", str(run_dir), "--support", str(loose), "--query", str(query), "--device",
                 "cpu"]) == 0  # the hidden file did not matter


def test_the_learner_selected_for_the_nearest_shot_count(run, tmp_path):
    """Per shot count its own pick: a 5-shot task gets the 5-shot learner, a 3-shot task the 1-shot one
    (ties go to the smaller), judged by the weights the probabilities come from."""
    run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    saved = torch.load(copy / "best_learner.pt", weights_only=True)
    one = saved["shots"]["1"]["learner"]
    five = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in one.items()}
    saved["shots"]["5"] = {**saved["shots"]["5"], "learner": five}
    torch.save(saved, copy / "best_learner.pt")
    for shots, state, other in ((5, five, one), (3, one, five)):
        task = tmp_path / f"task{shots}"
        sampler = _write_task(copy, task, shots)
        got = _adapt(task, copy, "--dtype", "float64")
        assert f"for {1 if shots == 3 else 5}-shot tasks" in got["learner"]
        b = sampler.batch([0], torch.float64)
        target = load_run_learner(copy, "last", CPU, torch.float64)
        probs = {}
        for name, st in (("picked", state), ("other", other)):
            target.learner.load_state_dict(st)
            init = run_learner_init(target, (shots,))
            probs[name] = adapted_query_logits_reference(init.template, init.for_tasks([0], CPU, torch.float64), b,
                                                         10, 0.01)[0].softmax(-1)
        got_probs = torch.tensor([p["probabilities"] for p in got["predictions"]], dtype=torch.float64)
        assert torch.allclose(got_probs, probs["picked"], rtol=0, atol=1e-10)
        assert not torch.allclose(got_probs, probs["other"], rtol=0, atol=1e-4)


def test_options_change_what_they_say(run, tmp_path, capsys):
    run_dir, _ = run
    _write_task(run_dir, tmp_path, 1)
    base = _adapt(tmp_path, run_dir, "--dtype", "float64", "--compare-random", "--out", str(tmp_path / "p.csv"))
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["label"] for r in rows] == [p["label"] for p in base["predictions"]]
    assert base["random"]["accuracy"] is not None and base["dtype"] == "float64"
    probs = [p["probabilities"] for p in base["predictions"]]
    chunked = _adapt(tmp_path, run_dir, "--dtype", "float64", "--chunk", "7")
    assert torch.allclose(torch.tensor([p["probabilities"] for p in chunked["predictions"]]), torch.tensor(probs),
                          rtol=0, atol=1e-10)
    fewer = _adapt(tmp_path, run_dir, "--dtype", "float64", "--steps", "2", "--lr", "0.05")
    assert fewer["steps"] == 2 and fewer["lr"] == 0.05 and [p["probabilities"] for p in fewer["predictions"]] != probs
    assert base["shared_with_support"] == [] and "warning" not in capsys.readouterr().err
    shutil.copy(next((tmp_path / "support").rglob("*.png")), tmp_path / "query" / next(
        (tmp_path / "query").iterdir()).name / "copied.png")
    assert len(_adapt(tmp_path, run_dir)["shared_with_support"]) == 1
    assert "1 query image(s) are also support images" in capsys.readouterr().err


def test_runs_without_what_adapt_reads_name_the_fix(run, tmp_path, capsys):
    run_dir, _ = run
    _write_task(run_dir, tmp_path, 1)
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    (bare / "checkpoint.pt").unlink()
    (bare / INPUT_SPACE).unlink()
    config = json.loads((bare / "config.json").read_text())
    config["data"] = {**config["data"], "source": "cifar-fs", "root": str(tmp_path / "gone")}
    (bare / "config.json").write_text(json.dumps(config))
    args = ["adapt", "--run", str(bare), "--support", str(tmp_path / "support"), "--query", str(tmp_path / "query"),
            "--device", "cpu"]
    assert main([*args, "--learner", "last"]) == 2
    assert "use the learner selected on meta-val (--learner selected)" in capsys.readouterr().err
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no input_space.json" in err and "restore the data where config.json names it" in err
