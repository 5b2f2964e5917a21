"""APC: autoregressive predictive coding speech encoder (LSP §1.3; Chung et al. 2019).

Three stacked unidirectional GRUs over the 80-d log-mel at 120 Hz; the last layer's 512-d outputs are
the audio features of every later stage. The postnet (a 1x1 conv back to 80 mel bins) is used only
for pre-training, where layer outputs at time t predict the mel frame t + time_shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class APCConfig:
    """APC sizes; defaults are the released encoder's (config `model_params.APC`)."""

    mel_dim: int = 80
    hidden_size: int = 512
    num_layers: int = 3
    residual: bool = False
    dropout: float = 0.0  # between GRU layers, pre-training only


class Postnet(nn.Module):
    """1x1 conv from the hidden size back to mel bins (upstream APC's `postnet.layer`)."""

    def __init__(self, hidden_size: int, mel_dim: int) -> None:
        super().__init__()
        self.layer = nn.Conv1d(hidden_size, mel_dim, kernel_size=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, mel)
        return self.layer(h.transpose(1, 2)).transpose(1, 2)


class APC(nn.Module):
    """APC encoder + pre-training postnet. `forward` carries GRU state so it can stream."""

    def __init__(self, cfg: APCConfig = APCConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        sizes = [cfg.mel_dim] + [cfg.hidden_size] * cfg.num_layers
        self.rnns = nn.ModuleList(nn.GRU(i, o, batch_first=True) for i, o in zip(sizes[:-1], sizes[1:]))
        self.dropout = nn.Dropout(cfg.dropout)
        self.postnet = Postnet(cfg.hidden_size, cfg.mel_dim)

    def forward(
        self, mel: torch.Tensor, state: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode mel frames.

        Args:
            mel: (B, T, mel_dim) normalised log-mel.
            state: per-layer GRU hidden states (1, B, H) from a previous call, or None to start.
        Returns:
            features (B, T, hidden) of the last layer, and the new per-layer states.
        """
        x = mel
        new_state = []
        for i, rnn in enumerate(self.rnns):
            out, h = rnn(x, None if state is None else state[i])
            new_state.append(h)
            if i < len(self.rnns) - 1:
                out = self.dropout(out)
            x = out + x if (self.cfg.residual and i > 0) else out
        return x, new_state

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-training head: features (B, T, H) -> predicted future mel (B, T, mel_dim)."""
        return self.postnet(features)
