"""Audio2Feature: APC features -> 25 mouth-related 3D landmark displacements (LSP §1.5).

Pairs of 120 Hz APC frames are concatenated into one 60 fps step (1024-d), reduced by an MLP, run
through a 3-layer LSTM and decoded to 75 = 25 points x xyz displacements from the mean shape. The
mouth lookahead (the output for frame t is read at step t + frame_future) is applied by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.networks.blocks import frame_mlp, run_lstm


@dataclass(frozen=True)
class Audio2FeatureConfig:
    """Audio2Feature sizes; defaults are the released network's (3,064,395 parameters)."""

    apc_dim: int = 512
    frames_per_step: int = 2  # APC frames concatenated into one video frame (LSP §1.13)
    hidden_size: int = 512
    lstm_hidden_size: int = 256
    lstm_layers: int = 3
    output_size: int = 75  # 25 points x 3


class Audio2FeatureNet(nn.Module):
    """APC features (B, 2T, 512) -> mouth displacements (B, T, 75); LSTM state is carried for streaming."""

    def __init__(self, cfg: Audio2FeatureConfig = Audio2FeatureConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.downsample = frame_mlp([cfg.apc_dim * cfg.frames_per_step, cfg.hidden_size, cfg.hidden_size])
        self.LSTM = nn.LSTM(cfg.hidden_size, cfg.lstm_hidden_size, num_layers=cfg.lstm_layers, batch_first=True)
        self.fc = frame_mlp([cfg.lstm_hidden_size, cfg.hidden_size, cfg.hidden_size, cfg.output_size])

    def forward(
        self, apc: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Args: apc (B, 2T, apc_dim); state: LSTM (h, c) or None. Returns (B, T, 75) and the new state."""
        b, t2, c = apc.shape
        x = apc.reshape(b, t2 // self.cfg.frames_per_step, c * self.cfg.frames_per_step)  # (B, T, 1024)
        x = self.downsample(x)  # (B, T, 512)
        x, state = run_lstm(self.LSTM, x, state)  # (B, T, 256)
        return self.fc(x), state  # (B, T, 75)


class Audio2FeatureEnsemble(nn.Module):
    """Several Audio2Feature networks of one recipe (trained with different seeds) run side by side: their
    displacements are averaged. On 54 s of training speech the held-out opening correlation of one network
    depends on its seed (0.61-0.72 over five); the mean of three is steadier and better (0.67-0.70)."""

    def __init__(self, members: list[Audio2FeatureNet]) -> None:
        super().__init__()
        if not members or len({m.cfg.apc_dim for m in members}) != 1:
            raise ValueError("an Audio2Feature ensemble needs one or more networks of the same APC size")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    def forward(
        self, apc: torch.Tensor, state: tuple | None = None
    ) -> tuple[torch.Tensor, tuple]:
        """Args: apc (B, 2T, apc_dim); state: the members' LSTM states or None. Returns (B, T, 75), new states."""
        states = state if state is not None else (None,) * len(self.members)
        outs, new = zip(*(m(apc, s) for m, s in zip(self.members, states)))
        return torch.stack(outs).mean(0), tuple(new)
