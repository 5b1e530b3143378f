"""The meta-generator of FIVE (Appendix B, Table 6).

z [bs, d_z] -> FC -> reshape [bs, 2nf, s/4, s/4] -> BN -> Up x2 -> Conv3x3(2nf, 2nf) -> BN
-> LeakyReLU(0.2) -> Up x2 -> Conv3x3(2nf, nf) -> BN -> LeakyReLU(0.2) -> Conv3x3(nf, nc)
-> Sigmoid. Images in [0, 1]; normalisation happens before the teacher, not here.

BatchNorm always uses batch statistics (train mode) and keeps no running statistics: the
official code never uses them. The two inner convolutions have no bias: a bias directly
before BatchNorm has a true gradient of zero, and its rounding-noise gradient would be
turned into lr-sized random steps by Adam.
"""

from __future__ import annotations

import torch
from torch import nn

from fastfree.errors import FastFreeError


class Generator(nn.Module):
    def __init__(self, latent_dim: int = 256, ngf: int = 64, image_size: int = 32, channels: int = 3):
        super().__init__()
        if image_size % 4 != 0:
            raise FastFreeError(f"the generator upsamples twice by 2: image_size must be a multiple of 4, got {image_size}")
        if latent_dim < 1 or ngf < 1:
            raise FastFreeError(f"generator needs latent_dim >= 1 and ngf >= 1, got {latent_dim}, {ngf}")
        self.latent_dim = latent_dim
        self.ngf = ngf
        self.image_size = image_size
        self.init_size = image_size // 4
        self.fc = nn.Linear(latent_dim, 2 * ngf * self.init_size**2)
        bn = dict(track_running_stats=False)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf, **bn),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, 1, 1, bias=False),
            nn.BatchNorm2d(2 * ngf, **bn),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, 1, 1, bias=False),
            nn.BatchNorm2d(ngf, **bn),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, channels, 3, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], 2 * self.ngf, self.init_size, self.init_size)
        return self.body(x)
