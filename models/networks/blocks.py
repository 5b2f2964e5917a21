"""Building blocks shared by several networks."""

from __future__ import annotations

import torch
from torch import nn

LEAKY_SLOPE = 0.2  # LSP §1.5/§1.6: every LeakyReLU in the audio networks
STEPWISE_MAX_STEPS = 16  # an inference LSTM call on a CPU this short runs cell by cell (run_lstm)


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


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`lstm(x, state)` for a batch-first LSTM. At inference on a CPU, a call of at most STEPWISE_MAX_STEPS
    steps (a live session's hop) runs cell by cell instead: the fused CPU kernel (oneDNN) prepares its
    weights on every call, which costs more than a few steps (measured for the 3-layer Audio2Feature LSTM,
    3 steps, one thread: 2.1 ms fused, 0.95 ms by cells). The same results to float rounding."""
    plain = lstm.batch_first and not lstm.bidirectional and not lstm.proj_size and lstm.bias
    if (x.device.type != "cpu" or torch.is_grad_enabled() or x.shape[1] > STEPWISE_MAX_STEPS or not plain
            or (lstm.training and lstm.dropout)):
        return lstm(x, state)
    if state is None:
        zeros = x.new_zeros(lstm.num_layers, x.shape[0], lstm.hidden_size)
        state = (zeros, zeros)
    hs, cs = [], []
    for layer in range(lstm.num_layers):
        weights = [getattr(lstm, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h, c = state[0][layer], state[1][layer]
        steps = []
        for t in range(x.shape[1]):
            h, c = torch.lstm_cell(x[:, t], (h, c), *weights)
            steps.append(h)
        hs.append(h)
        cs.append(c)
        x = torch.stack(steps, 1) if steps else x.new_zeros(x.shape[0], 0, lstm.hidden_size)
    return x, (torch.stack(hs), torch.stack(cs))
