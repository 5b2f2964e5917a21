"""Building blocks shared by several networks."""

from __future__ import annotations

import torch
from torch import nn

LEAKY_SLOPE = 0.2  # LSP §1.5/§1.6: every LeakyReLU in the audio networks


class FrameMLP(nn.Sequential):
    """An MLP applied to every time step of a (B, T, C) sequence; BatchNorm1d sees (B*T, C).

    Subclassing Sequential keeps the original's state-dict keys (``0.weight``, ``1.running_mean``...).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C_in) -> (B, T, C_out)
        b, t, c = x.shape
        return super().forward(x.reshape(b * t, c)).reshape(b, t, -1)


def frame_mlp(sizes: list[int]) -> FrameMLP:
    """Linear -> BN -> LeakyReLU(0.2) between consecutive `sizes`, a plain Linear at the end."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(n_out), nn.LeakyReLU(LEAKY_SLOPE)]
    return FrameMLP(*layers)


class ResidualBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the input, then ReLU (LSP §1.11)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return self.relu(x + self.block(x))
