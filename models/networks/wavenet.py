"""Conditional WaveNet (LSP §1.6) and its incremental, cached-state generator.

The network: history (B, C_in, L) -> two 1x1 start convs -> gated residual layers with dilations
1, 2, ..., 2^(layers-1), repeated `blocks` times, each conditioned on the audio through 1x1 convs ->
summed skips -> two 1x1 end convs -> (B, C_out, L). Receptive field 1 + (k-1) * sum(dilations) = 255.

`IncrementalWaveNet` produces the same outputs one time step at a time: each layer keeps a ring
buffer of its last (k-1)*d inputs (the "fast WaveNet" queue), so a step costs one column of every
conv instead of re-running the whole 255-step window as the original demo did (~1.08 GMAC/frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.networks.blocks import LEAKY_SLOPE


@dataclass(frozen=True)
class WaveNetConfig:
    """WaveNet sizes; defaults are the released head-pose network's (LSP §1.6)."""

    input_channels: int = 12
    output_channels: int = 25
    residual_layers: int = 7
    residual_blocks: int = 2
    residual_channels: int = 128
    dilation_channels: int = 128
    skip_channels: int = 256
    kernel_size: int = 2
    use_bias: bool = True
    cond_channels: int = 512
    input_dropout: float = 0.5  # whole history channels dropped in training

    @property
    def dilations(self) -> list[int]:
        return [2**i for i in range(self.residual_layers)] * self.residual_blocks

    @property
    def receptive_field(self) -> int:
        """Frames of history and audio the last output depends on (255 by default)."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)


class ResidualLayer(nn.Module):
    """Gated, audio-conditioned dilated causal conv with residual and skip 1x1 outputs."""

    def __init__(self, cfg: WaveNetConfig, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.pad = (cfg.kernel_size - 1) * dilation
        res, dil, bias = cfg.residual_channels, cfg.dilation_channels, cfg.use_bias
        self.filter_conv = nn.Conv1d(res, dil, cfg.kernel_size, dilation=dilation, bias=bias)
        self.gate_conv = nn.Conv1d(res, dil, cfg.kernel_size, dilation=dilation, bias=bias)
        self.residual_conv = nn.Conv1d(dil, res, 1, bias=bias)
        self.skip_conv = nn.Conv1d(dil, cfg.skip_channels, 1, bias=bias)
        self.cond_filter_conv = nn.Conv1d(cfg.cond_channels, dil, 1)
        self.cond_gate_conv = nn.Conv1d(cfg.cond_channels, dil, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, res, L), cond (B, cond, L) -> new x (B, res, L) and skip (B, skip, L)."""
        padded = F.pad(x, (self.pad, 0))  # causal: output t sees inputs <= t
        filt = self.filter_conv(padded) + self.cond_filter_conv(cond)
        gate = self.gate_conv(padded) + self.cond_gate_conv(cond)
        z = torch.tanh(filt) * torch.sigmoid(gate)
        return self.residual_conv(z) + x, self.skip_conv(z)


class WaveNet(nn.Module):
    """History (B, C_in, L) + condition (B, C_cond, L) -> per-step outputs (B, C_out, L)."""

    def __init__(self, cfg: WaveNetConfig = WaveNetConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_dropout = nn.Dropout1d(cfg.input_dropout)
        self.start_conv1 = nn.Conv1d(cfg.input_channels, cfg.residual_channels, 1, bias=cfg.use_bias)
        self.start_conv2 = nn.Conv1d(cfg.residual_channels, cfg.residual_channels, 1, bias=cfg.use_bias)
        self.residual_blocks = nn.ModuleList(ResidualLayer(cfg, d) for d in cfg.dilations)
        self.end_conv_1 = nn.Conv1d(cfg.skip_channels, cfg.output_channels, 1, bias=cfg.use_bias)
        self.end_conv_2 = nn.Conv1d(cfg.output_channels, cfg.output_channels, 1, bias=cfg.use_bias)

    @property
    def receptive_field(self) -> int:
        return self.cfg.receptive_field

    def forward(self, history: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(history)
        x = F.leaky_relu(self.start_conv1(x), LEAKY_SLOPE)
        x = F.leaky_relu(self.start_conv2(x), LEAKY_SLOPE)  # (B, res, L)
        skip = 0
        for layer in self.residual_blocks:
            x, s = layer(x, cond)
            skip = skip + s  # (B, skip, L)
        out = self.end_conv_1(F.leaky_relu(skip, LEAKY_SLOPE))
        return self.end_conv_2(F.leaky_relu(out, LEAKY_SLOPE))  # (B, out, L)


class IncrementalWaveNet:
    """Step-by-step WaveNet inference with cached dilated-conv inputs; equals `WaveNet.forward` in eval.

    Usage: ``inc = IncrementalWaveNet(net); c = inc.project_condition(cond)`` once for the whole
    condition sequence, then ``out = inc.step(history_t, c[:, t])`` for t = 0, 1, ... in order.
    """

    def __init__(self, net: WaveNet, batch_size: int = 1) -> None:
        cfg = net.cfg
        self.cfg = cfg
        k, dil = cfg.kernel_size, cfg.dilation_channels
        with torch.no_grad():
            self.start = [(net.start_conv1.weight[:, :, 0].clone(), _bias(net.start_conv1)),
                          (net.start_conv2.weight[:, :, 0].clone(), _bias(net.start_conv2))]
            self.end = [(net.end_conv_1.weight[:, :, 0].clone(), _bias(net.end_conv_1)),
                        (net.end_conv_2.weight[:, :, 0].clone(), _bias(net.end_conv_2))]
            self.layers = []
            cond_w, cond_b = [], []
            for layer in net.residual_blocks:
                # Taps of filter and gate fused: (2*dil, k*res) acting on [x[t-(k-1)d], ..., x[t]].
                w_in = torch.cat([layer.filter_conv.weight, layer.gate_conv.weight], 0)  # (2dil, res, k)
                w_in = w_in.permute(0, 2, 1).reshape(2 * dil, -1)
                b_in = torch.cat([_bias(layer.filter_conv), _bias(layer.gate_conv)])
                w_out = torch.cat([layer.residual_conv.weight[:, :, 0], layer.skip_conv.weight[:, :, 0]], 0)
                b_out = torch.cat([_bias(layer.residual_conv), _bias(layer.skip_conv)])
                self.layers.append((layer.dilation, w_in, b_in, w_out, b_out))
                cond_w += [layer.cond_filter_conv.weight[:, :, 0], layer.cond_gate_conv.weight[:, :, 0]]
                cond_b += [layer.cond_filter_conv.bias, layer.cond_gate_conv.bias]
            self.cond_w = torch.cat(cond_w, 0)  # (n_layers*2*dil, cond)
            self.cond_b = torch.cat(cond_b, 0)
        self.reset(batch_size)

    def reset(self, batch_size: int = 1) -> None:
        """Forget all cached inputs: the next step is time 0, as after causal zero padding."""
        cfg = self.cfg
        self.t = 0
        self.buffers = [torch.zeros((cfg.kernel_size - 1) * d, batch_size, cfg.residual_channels)
                        for d in cfg.dilations]

    def project_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Every layer's filter/gate conditioning in one matmul: (B, L, cond) -> (B, L, n_layers, 2*dil)."""
        b, n, _ = cond.shape
        out = F.linear(cond, self.cond_w, self.cond_b)
        return out.reshape(b, n, len(self.layers), 2 * self.cfg.dilation_channels)

    @torch.no_grad()
    def step(self, history: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One time step: history (B, C_in) and projected condition (B, n_layers, 2*dil) -> (B, C_out)."""
        k, res, dil = self.cfg.kernel_size, self.cfg.residual_channels, self.cfg.dilation_channels
        x = history
        for w, b in self.start:
            x = F.leaky_relu(torch.addmm(b, x, w.t()), LEAKY_SLOPE)
        skip = 0
        for i, (d, w_in, b_in, w_out, b_out) in enumerate(self.layers):
            buf = self.buffers[i]
            size = buf.shape[0]
            taps = [buf[(self.t - (k - 1 - j) * d) % size] for j in range(k - 1)] + [x]
            fg = torch.addmm(b_in, torch.cat(taps, 1), w_in.t()) + cond[:, i]  # (B, 2dil)
            z = torch.tanh(fg[:, :dil]) * torch.sigmoid(fg[:, dil:])
            rs = torch.addmm(b_out, z, w_out.t())  # (B, res + skip)
            buf[self.t % size] = x
            x = rs[:, :res] + x
            skip = skip + rs[:, res:]
        self.t += 1
        out = F.leaky_relu(skip, LEAKY_SLOPE)
        for i, (w, b) in enumerate(self.end):
            out = torch.addmm(b, out, w.t())
            if i == 0:
                out = F.leaky_relu(out, LEAKY_SLOPE)
        return out


def _bias(conv: nn.Conv1d) -> torch.Tensor:
    """A conv's bias, or zeros when it has none."""
    return conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
