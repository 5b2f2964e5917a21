"""LPIPS (Zhang et al. 2018, v0.1, AlexNet) from weight files the user already has.

Nothing can be downloaded here, so the metric runs only when both files are given:
* the ImageNet AlexNet of torchvision (`alexnet-owt-7be5be79.pth`: a state dict whose `features.*`
  entries are used; its classifier is ignored), and
* the LPIPS linear heads for AlexNet (`alex.pth` of the LPIPS release: `lin0.model.1.weight` ...
  `lin4.model.1.weight`, each (1, C, 1, 1)).
Loading is strict: a missing or mis-shaped weight is an error naming it. The network is written
here (torchvision is not needed); its weight names follow the files above.

Distance: images in [-1, 1], shifted and scaled per channel, AlexNet's five ReLU outputs, each
unit-normalised over channels, squared difference, weighted by the linear head, averaged over space
and summed over the five layers (0 for identical images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from util.checkpoint import load_state_dict_file, load_strict

SHIFT = (-0.030, -0.088, -0.188)  # LPIPS ScalingLayer
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)  # AlexNet's five tapped ReLU outputs
TAPS = (1, 4, 7, 9, 11)  # indices of those ReLUs in torchvision's alexnet.features
EPS = 1e-10


def alexnet_features() -> nn.Sequential:
    """The convolutional part of AlexNet, laid out as torchvision's `alexnet().features`."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


class _Head(nn.Module):
    """LPIPS NetLinLayer: (dropout, 1x1 conv without bias); only the conv has weights."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()
        self.lins = nn.ModuleList([_Head(c) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_files(cls, alexnet: Path, lin: Path) -> LPIPS:
        net = cls()
        # views of the network whose weight names are those of each file
        features = nn.ModuleDict({"features": net.features})
        heads = nn.ModuleDict({f"lin{i}": head for i, head in enumerate(net.lins)})
        alex = load_state_dict_file(alexnet, "--lpips_alexnet")
        load_strict(features, {k: v for k, v in alex.items() if k.startswith("features.")}, alexnet,
                    "--lpips_alexnet")  # the file's classifier is not used
        load_strict(heads, load_state_dict_file(lin, "--lpips_lin"), lin, "--lpips_lin")
        return net.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + EPS))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B,) distances."""
        fa = self._taps((a - self.shift) / self.scale)
        fb = self._taps((b - self.shift) / self.scale)
        return sum(lin((x - y).pow(2)).mean((2, 3)) for lin, x, y in zip(self.lins, fa, fb))[:, 0]

    @torch.no_grad()
    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Two (H, W, 3) uint8 RGB images -> their LPIPS distance."""
        device = self.shift.device
        ta, tb = (torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1
                  for x in (a, b))
        return float(self(ta, tb)[0])

