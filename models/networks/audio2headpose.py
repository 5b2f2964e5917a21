"""Audio2Headpose: autoregressive probabilistic WaveNet from APC features to head pose (LSP §1.6).

Per video frame the 1024-d APC pair is reduced to a 512-d condition; the WaveNet reads the last 255
conditions and the last 255 sampled 12-d poses ([rot xyz in degrees, translation xyz, and their
velocities]) and outputs a Gaussian over the next pose. Generation samples from it and feeds the
sample back. Pose t sees audio up to frame t + frame_future (15 frames = 250 ms at 60 fps).

Inference samples one cached step per frame with `IncrementalWaveNet` (~4 MMAC per frame, run by
models/runtime/streams.py PoseStream); `generate_headpose_full` is the original algorithm, which re-runs
the MLP and the WaveNet over the full 255-frame window for every frame (~1.08 GMAC per frame), kept as
the reference for tests and benchmarks: both give the same poses for the same random draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.losses import gmm_sample
from models.networks.blocks import frame_mlp
from models.networks.wavenet import WaveNet, WaveNetConfig


@dataclass(frozen=True)
class Audio2HeadposeConfig(WaveNetConfig):
    """Audio2Headpose sizes: the WaveNet's (inherited) and the audio condition's and the pose mixture's;
    defaults are the released network's (4,266,915 parameters)."""

    apc_dim: int = 512
    frames_per_step: int = 2
    ncenter: int = 1  # Gaussian mixture components
    ndim: int = 12  # rot(3) + trans(3) + their velocities(6)

    @property
    def output_channels(self) -> int:
        """Mixture logits + means + -log sigmas."""
        return self.ncenter * (1 + 2 * self.ndim)


class Audio2HeadposeNet(nn.Module):
    """Teacher-forced forward for training; sampling runs step by step (PoseStream, generate_headpose_full)."""

    def __init__(self, cfg: Audio2HeadposeConfig = Audio2HeadposeConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_downsample = frame_mlp([cfg.apc_dim * cfg.frames_per_step, cfg.cond_channels, cfg.cond_channels])
        self.WaveNet = WaveNet(cfg, cfg.ndim, cfg.output_channels)

    @property
    def receptive_field(self) -> int:
        return self.WaveNet.receptive_field

    def condition(self, apc: torch.Tensor) -> torch.Tensor:
        """APC features (B, 2L, apc_dim) -> per-frame condition (B, L, cond_channels)."""
        b, t2, c = apc.shape
        fps = self.cfg.frames_per_step
        return self.audio_downsample(apc.reshape(b, t2 // fps, c * fps))

    def forward(self, apc: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """apc (B, 2L, apc_dim) and history (B, L, ndim) -> mixture parameters (B, L, output_channels).

        Output step j sees history[<= j] and audio[<= j]; to predict pose t, history[j] is pose t-1.
        """
        cond = self.condition(apc).transpose(1, 2)  # (B, cond, L)
        return self.WaveNet(history.transpose(1, 2), cond).transpose(1, 2)


def _check_inputs(net: Audio2HeadposeNet, apc_pairs: torch.Tensor, n_frames: int, frame_future: int) -> None:
    if apc_pairs.shape[0] < n_frames + frame_future:
        raise ValueError(f"need {n_frames + frame_future} APC frame pairs for {n_frames} poses "
                         f"with lookahead {frame_future}, got {apc_pairs.shape[0]}")


def window_index(n_frames: int, receptive_field: int, frame_future: int) -> torch.Tensor:
    """Condition frame of each global step g = 0 .. rf-2+n_frames: audio frame g+ff-(rf-1), clamped at 0.

    The original prepends rf-1 copies of audio frame 0 and starts from rf zero poses (LSP §1.6).
    """
    g = torch.arange(receptive_field - 1 + n_frames)
    return (g + frame_future - (receptive_field - 1)).clamp(min=0)


@torch.no_grad()
def generate_headpose_full(
    net: Audio2HeadposeNet, apc_pairs: torch.Tensor, n_frames: int, frame_future: int,
    noise: torch.Tensor, uniform: torch.Tensor, sigma_scale: float,
) -> torch.Tensor:
    """The original algorithm: the full 255-frame window (MLP + WaveNet) recomputed for every frame."""
    _check_inputs(net, apc_pairs, n_frames, frame_future)
    cfg, rf, device = net.cfg, net.receptive_field, apc_pairs.device
    index = window_index(n_frames, rf, frame_future).to(device)
    history = torch.zeros(1, rf, cfg.ndim, device=device)
    poses = torch.zeros(n_frames, cfg.ndim, device=device)
    for i in range(n_frames):
        window = apc_pairs[index[i : i + rf]].reshape(1, -1, cfg.apc_dim)  # (1, 2*rf, apc_dim)
        out = net(window, history)[:, -1]  # (1, C_out)
        sample = gmm_sample(out, cfg.ncenter, cfg.ndim, sigma_scale, noise[i : i + 1].to(device),
                            uniform[i : i + 1].to(device))
        poses[i] = sample[0]
        history = torch.cat([history[:, 1:], sample[:, None]], 1)
    return poses
