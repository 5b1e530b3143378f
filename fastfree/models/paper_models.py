"""The authors' Conv-4, ResNet-18 and ResNet-50, as in their network.py: ONLY for Table 1.

These definitions exist so that `fastfree profile table1` can count the paper's Table 1 on
the very architectures the authors counted (WalkerWorldPeace/FREE, network.py, itself from
the CloserLook few-shot code base). Nothing trains them; the package's own models are in
`conv4.py` and `resnet.py`. They differ from ours where it changes a count:

- ResNet stem: Conv3x3(3, 64, stride 1) -> BatchNorm, with NO ReLU and no max-pool.
- ResNet-50: `BottleneckBlock` with stage outputs 256/512/1024/2048 (bottleneck width a
  quarter of that), a bias on the 3x3 convolution (`C2`), and a 1x1 projection shortcut
  WITHOUT BatchNorm; the stride sits on the 3x3 convolution.
- Conv-4 (`ConvNet(depth=4)`): each block keeps its layers both as attributes (`C`, `BN`,
  `relu`, `pool`) and inside a `trunk` Sequential. The forward pass runs each layer once,
  but a counter that walks `children()` reaches every layer of a block by two routes;
  thop does, which is why the paper's Conv-4 figures are 4x too high (see
  `fastfree.profiling.flops`). The duplicate registration is kept on purpose.

Only the structure matters here (counts depend on shapes); initialisation is PyTorch's.
"""

from __future__ import annotations

import torch
from torch import nn


class Flatten(nn.Module):
    """The authors' Flatten (a custom module: thop has no rule for it and counts zero)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class ConvBlock(nn.Module):
    """Conv3x3(bias) -> BN -> ReLU -> MaxPool2, registered twice (attributes and `trunk`)."""

    def __init__(self, indim: int, outdim: int, pool: bool = True):
        super().__init__()
        self.C = nn.Conv2d(indim, outdim, 3, padding=1)
        self.BN = nn.BatchNorm2d(outdim)
        self.relu = nn.ReLU(inplace=True)
        layers = [self.C, self.BN, self.relu]
        if pool:
            self.pool = nn.MaxPool2d(2)
            layers.append(self.pool)
        self.trunk = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class ConvNet(nn.Module):
    """The authors' Conv-4 (depth 4, 32 filters, `arbitrary_input=False`)."""

    def __init__(self, depth: int = 4, out_dim: int = 5, img_size: int = 32, channel: int = 3):
        super().__init__()
        trunk: list[nn.Module] = [ConvBlock(channel if i == 0 else 32, 32, pool=i < 4) for i in range(depth)]
        feature = (img_size >> 4) * (img_size >> 4)
        trunk += [Flatten(), nn.Linear(32 * feature, out_dim)]
        self.trunk = nn.Sequential(*trunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class SimpleBlock(nn.Module):
    """ResNet-10/18/34 block; 1x1 projection + BN shortcut when the width changes."""

    def __init__(self, indim: int, outdim: int, half_res: bool):
        super().__init__()
        stride = 2 if half_res else 1
        self.C1 = nn.Conv2d(indim, outdim, 3, stride=stride, padding=1, bias=False)
        self.BN1 = nn.BatchNorm2d(outdim)
        self.C2 = nn.Conv2d(outdim, outdim, 3, padding=1, bias=False)
        self.BN2 = nn.BatchNorm2d(outdim)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.identity = indim == outdim
        if not self.identity:
            self.shortcut = nn.Conv2d(indim, outdim, 1, stride, bias=False)
            self.BNshortcut = nn.BatchNorm2d(outdim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.BN2(self.C2(self.relu1(self.BN1(self.C1(x)))))
        short = x if self.identity else self.BNshortcut(self.shortcut(x))
        return self.relu2(out + short)


class BottleneckBlock(nn.Module):
    """The CloserLook bottleneck: bias on C2, stride on C2, shortcut 1x1 conv without BN."""

    def __init__(self, indim: int, outdim: int, half_res: bool):
        super().__init__()
        mid = outdim // 4
        stride = 2 if half_res else 1
        self.C1 = nn.Conv2d(indim, mid, 1, bias=False)
        self.BN1 = nn.BatchNorm2d(mid)
        self.C2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1)
        self.BN2 = nn.BatchNorm2d(mid)
        self.C3 = nn.Conv2d(mid, outdim, 1, bias=False)
        self.BN3 = nn.BatchNorm2d(outdim)
        self.relu = nn.ReLU()
        self.identity = indim == outdim
        if not self.identity:
            self.shortcut = nn.Conv2d(indim, outdim, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.identity else self.shortcut(x)
        out = self.relu(self.BN1(self.C1(x)))
        out = self.relu(self.BN2(self.C2(out)))
        out = self.BN3(self.C3(out))
        return self.relu(out + short)


class PaperResNet(nn.Module):
    """The authors' ResNet: stem Conv3x3 -> BN (no ReLU, no max-pool), four stages, GAP, linear."""

    def __init__(self, block: type[nn.Module], depths: tuple[int, ...], widths: tuple[int, ...], out_dim: int = 5):
        super().__init__()
        trunk: list[nn.Module] = [nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64)]
        indim = 64
        for i, depth in enumerate(depths):
            for j in range(depth):
                trunk.append(block(indim, widths[i], half_res=i >= 1 and j == 0))
                indim = widths[i]
        trunk += [nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(indim, out_dim)]
        self.trunk = nn.Sequential(*trunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


def paper_conv4(out_dim: int = 5, img_size: int = 32) -> ConvNet:
    return ConvNet(4, out_dim, img_size)


def paper_resnet18(out_dim: int = 5, img_size: int = 32) -> PaperResNet:
    return PaperResNet(SimpleBlock, (2, 2, 2, 2), (64, 128, 256, 512), out_dim)


def paper_resnet50(out_dim: int = 5, img_size: int = 32) -> PaperResNet:
    return PaperResNet(BottleneckBlock, (3, 4, 6, 3), (256, 512, 1024, 2048), out_dim)


# Table 1's column name -> constructor(out_dim, img_size)
PAPER_MODELS = {"conv4": paper_conv4, "resnet18": paper_resnet18, "resnet50": paper_resnet50}

__all__ = ["PAPER_MODELS", "ConvNet", "PaperResNet", "paper_conv4", "paper_resnet18", "paper_resnet50"]
