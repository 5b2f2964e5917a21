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

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import nn

from models.networks.blocks import LEAKY_SLOPE


@dataclass(frozen=True)
class WaveNetConfig:
    """WaveNet sizes; defaults are the released head-pose network's (LSP §1.6). The input and output
    widths are the caller's (Audio2Headpose: the pose size and its mixture parameters)."""

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

    def __init__(self, cfg: WaveNetConfig, input_channels: int, output_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_dropout = nn.Dropout1d(cfg.input_dropout)
        self.start_conv1 = nn.Conv1d(input_channels, cfg.residual_channels, 1, bias=cfg.use_bias)
        self.start_conv2 = nn.Conv1d(cfg.residual_channels, cfg.residual_channels, 1, bias=cfg.use_bias)
        self.residual_blocks = nn.ModuleList(ResidualLayer(cfg, d) for d in cfg.dilations)
        self.end_conv_1 = nn.Conv1d(cfg.skip_channels, output_channels, 1, bias=cfg.use_bias)
        self.end_conv_2 = nn.Conv1d(output_channels, output_channels, 1, bias=cfg.use_bias)

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

    A step is a chain of tiny (1 x 128) products, where per-op dispatch dominates: it runs in NumPy
    (~3x less overhead than torch eager at this size), on the CPU, whatever device the net is on.

    Usage: ``inc = IncrementalWaveNet(net); c = inc.project_condition(cond)`` once for the condition
    sequence, optionally ``inc.prime(history, c[:, :n])`` to run the first n steps as one convolution,
    then ``out = inc.step(history_t, c[:, t])`` for the following steps, in order.
    """

    def __init__(self, net: WaveNet, batch_size: int = 1) -> None:
        cfg = net.cfg
        self.net = net
        self.cfg = cfg
        self.dil = cfg.dilation_channels
        blocks = list(net.residual_blocks)
        with torch.no_grad():
            # Conditioning of every layer in one matmul, with the filter/gate conv biases folded in.
            self.cond_w = torch.cat([torch.cat([b.cond_filter_conv.weight[:, :, 0], b.cond_gate_conv.weight[:, :, 0]])
                                     for b in blocks])  # (n_layers*2*dil, cond)
            self.cond_b = torch.cat([torch.cat([b.cond_filter_conv.bias + _bias(b.filter_conv),
                                                b.cond_gate_conv.bias + _bias(b.gate_conv)]) for b in blocks])
        self.start = [(_np(_w(c).t()), _np(_bias(c))) for c in (net.start_conv1, net.start_conv2)]
        self.end = [(_np(_w(c).t()), _np(_bias(c))) for c in (net.end_conv_1, net.end_conv_2)]
        # Per layer and tap: filter and gate weights side by side, as (res, 2*dil) for x @ w.
        self.taps = [_np(torch.cat([b.filter_conv.weight, b.gate_conv.weight], 0).permute(2, 1, 0)) for b in blocks]
        self.res = [(_np(_w(b.residual_conv).t()), _np(_bias(b.residual_conv))) for b in blocks]
        # Skips are linear in z, so all layers' skip convs become one product at the end of a step.
        self.skip_w = _np(torch.cat([_w(b.skip_conv) for b in blocks], 1).t())
        self.skip_b = _np(torch.stack([_bias(b.skip_conv) for b in blocks]).sum(0))
        self.reset(batch_size)

    def reset(self, batch_size: int = 1) -> None:
        """Forget all cached inputs: the next step is time 0, as after causal zero padding."""
        cfg = self.cfg
        self.t = 0
        self.buffers = [np.zeros(((cfg.kernel_size - 1) * d, batch_size, cfg.residual_channels), np.float32)
                        for d in cfg.dilations]
        self.z = np.zeros((batch_size, len(self.buffers) * self.dil), np.float32)

    @torch.no_grad()
    def project_condition(self, cond: torch.Tensor) -> np.ndarray:
        """Every layer's filter/gate conditioning: (B, L, cond) -> (B, L, n_layers, 2*dil) float32."""
        b, n, _ = cond.shape
        out = F.linear(cond, self.cond_w.to(cond), self.cond_b.to(cond))
        return _np(out.reshape(b, n, len(self.buffers), 2 * self.dil))

    @torch.no_grad()
    def prime(self, history: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """Run the first L steps at once with the convolutional forward and fill the caches.

        Args: history (B, L, C_in); cond (B, L, n_layers, 2*dil) from `project_condition`.
        Returns: the outputs of those steps (B, L, C_out).
        """
        if self.t != 0:
            raise RuntimeError("prime() must come first, right after reset()")
        net, dil, n = self.net, self.dil, history.shape[1]
        device = next(net.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(history)).to(device).transpose(1, 2)
        cond_t = torch.from_numpy(np.ascontiguousarray(cond)).to(device)
        x = F.leaky_relu(net.start_conv1(x), LEAKY_SLOPE)
        x = F.leaky_relu(net.start_conv2(x), LEAKY_SLOPE)
        skip = 0
        for i, layer in enumerate(net.residual_blocks):
            size = self.buffers[i].shape[0]
            recent = _np(x[:, :, max(0, n - size) :].permute(2, 0, 1))  # the newest inputs, oldest first
            for j, t in enumerate(range(max(0, n - size), n)):
                self.buffers[i][t % size] = recent[j]
            c = cond_t[:, :, i].transpose(1, 2)  # (B, 2dil, L)
            padded = F.pad(x, (layer.pad, 0))
            filt = F.conv1d(padded, layer.filter_conv.weight, None, dilation=layer.dilation) + c[:, :dil]
            gate = F.conv1d(padded, layer.gate_conv.weight, None, dilation=layer.dilation) + c[:, dil:]
            z = torch.tanh(filt) * torch.sigmoid(gate)
            x = layer.residual_conv(z) + x
            skip = skip + layer.skip_conv(z)
        self.t = n
        out = net.end_conv_1(F.leaky_relu(skip, LEAKY_SLOPE))
        return _np(net.end_conv_2(F.leaky_relu(out, LEAKY_SLOPE)).transpose(1, 2))

    def step(self, history: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """One time step: history (B, C_in) and projected condition (B, n_layers, 2*dil) -> (B, C_out)."""
        k, dil, t = self.cfg.kernel_size, self.dil, self.t
        x = history
        for w, b in self.start:
            x = _leaky(x @ w + b)
        for i, buf in enumerate(self.buffers):
            size, taps = buf.shape[0], self.taps[i]
            fg = x @ taps[k - 1] + cond[:, i]  # current input
            for j in range(k - 1):  # cached inputs x[t - (k-1-j) d]
                fg += buf[(t - (k - 1 - j) * (size // (k - 1))) % size] @ taps[j]
            buf[t % size] = x
            z = self.z[:, i * dil : (i + 1) * dil]
            np.multiply(np.tanh(fg[:, :dil]), expit(fg[:, dil:]), out=z)
            w, b = self.res[i]
            x = x + z @ w + b
        self.t += 1
        out = _leaky(self.z @ self.skip_w + self.skip_b)
        out = _leaky(out @ self.end[0][0] + self.end[0][1])
        return out @ self.end[1][0] + self.end[1][1]


def _leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, LEAKY_SLOPE * x)


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def _w(conv: nn.Conv1d) -> torch.Tensor:
    """A 1x1 conv's weight as a matrix (out, in)."""
    return conv.weight.detach()[:, :, 0].clone()


def _bias(conv: nn.Conv1d) -> torch.Tensor:
    """A conv's bias, or zeros when it has none."""
    return conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
