"""Model files trained elsewhere, read into fastfree's models: layouts, containers and refusals."""

import pytest
import torch
from safetensors.torch import save_file

from fastfree.errors import FastFreeError
from fastfree.models import Conv4, build_model
from fastfree.models.paper_models import paper_conv4, paper_resnet18
from fastfree.pool.importing import import_model, model_files, read_state_dict


def _randomised(model):
    """Weights and BatchNorm statistics away from their initial values, so a wrong mapping shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else
                        torch.randn(t.shape, generator=g) * 0.3)
    return model.eval()


def test_the_authors_conv4_is_fastfrees_conv4_weight_for_weight(tmp_path):
    """Their network.py's Conv-4 (our paper_models copy, with its layers registered twice) maps one to
    one: the imported model computes the same function, in float64."""
    theirs = _randomised(paper_conv4(out_dim=5)).double()
    torch.save(theirs.state_dict(), tmp_path / "m.pth")
    sd, width, classes, layout = import_model(tmp_path / "m.pth", "conv4", 32)
    assert (width, classes, layout) == (32, 5, "authors-conv4")
    ours = Conv4(num_classes=5).double()
    ours.load_state_dict(sd)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(ours.eval()(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_fastfree_layout_in_every_container(tmp_path):
    model = _randomised(build_model("conv4", 4, 8, 32))
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "b.pt")  # a training checkpoint
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "c.pth")  # DataParallel
    torch.save({"teacher": sd, "specific": [3, 1, 4, 0]}, tmp_path / "d10.PTH")  # as the authors' tools.py saves
    torch.save(sd, tmp_path / "d9.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    for name in ("a.safetensors", "b.pt", "c.pth", "d10.PTH"):
        got, width, classes, layout = import_model(tmp_path / name, "conv4", 32)
        assert (width, classes, layout) == (8, 4, "fastfree"), name
        assert all(torch.equal(got[k], sd[k]) for k in sd), name
    # a folder: its model files only, numbers in names compared as numbers
    assert [p.name for p in model_files([tmp_path])] == ["a.safetensors", "b.pt", "c.pth", "d9.pt", "d10.PTH"]


def test_refusals_name_the_problem(tmp_path):
    def refused(path, arch="conv4", size=32):
        with pytest.raises(FastFreeError) as e:
            import_model(path, arch, size)
        return str(e.value)

    torch.save(_randomised(paper_conv4()).state_dict(), tmp_path / "theirs.pt")
    assert "import it with --arch conv4, not resnet10" in refused(tmp_path / "theirs.pt", "resnet10")
    torch.save(paper_resnet18().state_dict(), tmp_path / "resnet.pt")
    assert "no ReLU after its stem" in refused(tmp_path / "resnet.pt", "resnet18")
    torch.save(build_model("conv4", 5, 8, 32).state_dict(), tmp_path / "small.pt")
    assert "do not fit a conv4 of width 8, 5 classes, 48 px" in refused(tmp_path / "small.pt", size=48)
    assert "no conv1.weight / classifier.weight" in refused(tmp_path / "small.pt", "resnet10")
    sd = build_model("conv4", 5, 8, 32).state_dict()
    torch.save({**sd, "features.0.weight": sd["features.0.weight"].to(torch.int32)}, tmp_path / "ints.pt")
    assert "not floating point (features.0.weight: torch.int32)" in refused(tmp_path / "ints.pt")
    torch.save({**sd, "features.0.weight": torch.tensor(1.0)}, tmp_path / "scalar.pt")
    assert "no features.0.weight / classifier.weight" in refused(tmp_path / "scalar.pt")
    torch.save({0: torch.zeros(1)}, tmp_path / "intkeys.pt")
    assert "expected a state dict" in refused(tmp_path / "intkeys.pt")
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "junk.pt")
    assert "expected a state dict" in refused(tmp_path / "junk.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert "weights_only=True" in refused(tmp_path / "text.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 8)
    assert "not a readable safetensors file" in str(pytest.raises(FastFreeError, read_state_dict,
                                                                    tmp_path / "bad.safetensors").value)
    (tmp_path / "empty").mkdir()
    for paths, message in (([tmp_path / "empty"], "holds no model files"), ([tmp_path / "nope.pt"], "no such"),
                           ([tmp_path / "small.pt", tmp_path / "small.pt"], "named twice"),
                           # one file under two spellings is one teacher too
                           ([tmp_path / "small.pt", tmp_path / "empty" / ".." / "small.pt"], "named twice")):
        with pytest.raises(FastFreeError, match=message):
            model_files(paths)
