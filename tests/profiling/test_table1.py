"""`fastfree profile table1`: the paper's Table 1 recounted (shapes only, meta device)."""

import json

import pytest
import torch
from torch import nn

from fastfree.cli import main
from fastfree.models import build_model
from fastfree.models.paper_models import PAPER_MODELS
from fastfree.profiling.flops import flop_counter_flops, thop_macs
from fastfree.profiling.table1 import PAPER, RESOLUTIONS, table1

RESNET_CELLS = [(arch, s) for arch in ("resnet18", "resnet50") for s in RESOLUTIONS]


def _theirs(arch, s):
    with torch.device("meta"):
        return PAPER_MODELS[arch](5, s)


def _ours(arch, s):
    with torch.device("meta"):
        return build_model(arch, 5, None, s)


@pytest.mark.parametrize("arch,s", RESNET_CELLS)
def test_paper_convention_gives_the_printed_resnet_figures(arch, s):
    count = thop_macs(_theirs(arch, s), s)
    assert count.macs_as_run == count.macs  # no layer of the ResNets is registered twice
    assert round(2 * count.macs / 1e9, 2) == PAPER[s][arch]


def test_headline_cells_exactly():
    # integer MACs as thop 0.1.1.post2209072238 counts them on the authors' models (checked once)
    assert thop_macs(_theirs("resnet18", 32), 32).macs == 557_886_464  # 2x: 1.1158 -> 1.12
    assert thop_macs(_theirs("resnet50", 224), 224).macs == 64_170_700_800  # 2x: 128.3414 -> 128.34


def _conv4_layers(s, width=32):
    """(conv MACs, BatchNorm elements, side after the four pools) of a 32-filter Conv-4, by hand."""
    macs, bn, cin, side = 0, 0, 3, s
    for _ in range(4):
        macs += side * side * width * cin * 3 * 3  # 3x3, padding 1: output side = input side
        bn += width * side * side
        cin, side = width, side // 2  # 2x2 max-pool, floor
    return macs, bn, side


@pytest.mark.parametrize("s", RESOLUTIONS)
def test_conv4_thop_count_by_hand_and_the_papers_4x(s):
    conv, bn, side = _conv4_layers(s)
    linear = 32 * side * side * 5
    count = thop_macs(_theirs("conv4", s), s)
    assert count.by_type == {"Conv2d": conv, "BatchNorm2d": 4 * bn, "ReLU": 0, "MaxPool2d": 0, "Linear": linear}
    assert count.macs == conv + 4 * bn + linear
    # thop reaches each block's conv and BatchNorm by two routes: hooked twice, summed twice
    assert count.macs_as_run == 4 * (conv + 4 * bn) + linear
    assert round(2 * count.macs_as_run / 1e9, 2) == PAPER[s]["conv4"]
    digits, value = {32: (4, 0.0083), 84: (3, 0.057), 224: (2, 0.41)}[s]  # counted once: a quarter
    assert round(2 * count.macs / 1e9, digits) == value


@pytest.mark.parametrize("s", RESOLUTIONS)
def test_conv4_fwd_bwd_matches_the_analytic_count(s):
    conv, _, side = _conv4_layers(s)
    mac = conv + 32 * side * side * 5  # convolutions + the linear head
    model = _ours("conv4", s)
    assert flop_counter_flops(model, s, "none") == 2 * mac
    # backward: grad of the input (a transposed conv / matmul of the same size) and of the weights
    assert flop_counter_flops(model, s, "all") == 2 * mac + 2 * mac + 2 * mac
    assert flop_counter_flops(model, s, "input") == 2 * mac + 2 * mac


def test_double_registration_is_counted_as_thop_does():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
            self.again = nn.Sequential(self.conv)  # two routes: thop hooks it twice and sums it twice

        def forward(self, x):
            return self.conv(x)

    count = thop_macs(Net(), 4, channels=1)
    assert count.macs == 4 * 4 * 2 * 9 and count.macs_as_run == 4 * count.macs


def test_unknown_layer_is_an_error():
    with pytest.raises(TypeError, match="no thop rule for GELU"):
        thop_macs(nn.Sequential(nn.Conv2d(3, 2, 1), nn.GELU()), 4)


def test_every_printed_cell_is_reproduced():
    rows = table1()
    assert [(r.model, r.image_size) for r in rows] == [(a, s) for a in ("conv4", "resnet18", "resnet50")
                                                        for s in RESOLUTIONS]
    assert all(r.reproduced for r in rows)
    for r in rows:
        assert r.ours_fwd_bwd == pytest.approx(3 * r.ours_forward)
        assert r.ours_forward < r.paper_convention < 1.05 * r.ours_forward


def test_cli_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["profile", "table1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ResNet-18 | 32 | 1.12 | 1.1158 | 1.1158 |" in printed
    assert "| ResNet-50 | 224 | 128.34 | 128.3414 | 128.3414 |" in printed
    r = json.loads(out.read_text())
    assert r["command"] == "profile table1" and r["unit"] == "GFLOPs" and r["torch"] == torch.__version__
    assert len(r["rows"]) == 9 and len(r["footnotes"]) == 3
    keys = {"model", "image_size", "paper", "thop_as_run", "paper_convention", "ours_forward", "ours_fwd_bwd",
            "ours_fwd_bwd_input", "reproduced"}
    assert all(set(row) == keys for row in r["rows"])
    cell = {(row["model"], row["image_size"]): row for row in r["rows"]}
    assert round(cell["resnet18", 32]["paper_convention"], 2) == 1.12
    assert round(cell["resnet50", 224]["paper_convention"], 2) == 128.34
    assert set(r["columns"]) == keys - {"model", "image_size", "reproduced"}
