"""Multiscale PatchGAN discriminator (pix2pixHD), as the original intended it (LSP §4.1).

`num_D` PatchGANs see the (generator input, image) pair at full, 1/2, 1/4, ... resolution. Each has
`n_layers` stride-2 4x4 convs, one stride-1 conv and a 1-channel output, and returns its intermediate
activations for the feature-matching loss. Input channels = G input (13) + 3 = 16 (the release's
26-channel, single-scale D was a positional-argument bug, LSP §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MultiscaleDiscriminatorConfig:
    """Defaults give the intended D: 5,559,682 parameters."""

    input_nc: int = 16
    ndf: int = 64
    n_layers: int = 3
    num_D: int = 2


class MultiscaleDiscriminator(nn.Module):
    """Returns, per scale, the list of layer outputs (the last one is the patch prediction)."""

    def __init__(self, cfg: MultiscaleDiscriminatorConfig = MultiscaleDiscriminatorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        pad = math.ceil((4 - 1) / 2)
        for scale in range(cfg.num_D):
            nf, prev = cfg.ndf, cfg.input_nc
            layers: list[list[nn.Module]] = [[nn.Conv2d(prev, nf, 4, 2, pad), nn.LeakyReLU(0.2, True)]]
            for n in range(1, cfg.n_layers + 1):
                prev, nf = nf, min(nf * 2, 512)
                stride = 2 if n < cfg.n_layers else 1
                layers.append([nn.Conv2d(prev, nf, 4, stride, pad), nn.BatchNorm2d(nf), nn.LeakyReLU(0.2, True)])
            layers.append([nn.Conv2d(nf, 1, 4, 1, pad)])
            for j, layer in enumerate(layers):
                self.add_module(f"scale{scale}_layer{j}", nn.Sequential(*layer))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """x (B, input_nc, H, W) -> [[layer outputs at full resolution], [at 1/2], ...].

        As in pix2pixHD, the full-resolution input goes through the PatchGAN with the highest index
        (`scale{num_D-1}_*`) and each halving to the next lower one, so pix2pixHD-style weights load
        and give the same outputs (tests/test_forward_equality.py).
        """
        results = []
        for i in range(self.cfg.num_D):
            scale = self.cfg.num_D - 1 - i
            feats, h = [], x
            for j in range(self.cfg.n_layers + 2):
                h = getattr(self, f"scale{scale}_layer{j}")(h)
                feats.append(h)
            results.append(feats)
            if i < self.cfg.num_D - 1:
                x = self.downsample(x)
        return results
