"""Incremental head-pose WaveNet: the same poses as the original full recompute for the same draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ar1

from models.losses import gmm_nll, gmm_sample
from models.networks import Audio2HeadposeConfig, Audio2HeadposeNet
from models.networks.audio2headpose import generate_headpose_full
from models.networks.wavenet import IncrementalWaveNet, WaveNet, WaveNetConfig
from models.runtime.settings import PoseSettings
from models.runtime.streams import NOISE_BLOCK, NoiseSource, PoseStream


def pose_stream_samples(net, pairs, ff, seed, chunks):
    """The raw pose samples production runs: PoseStream fed `pairs` in `chunks` pieces."""
    settings = PoseSettings(frame_future=ff, sigma_scale=0.3, rot_gain=1, trans_gain=1, rot_sigma=0, trans_sigma=0,
                            shoulder_gain=0.5)
    stream = PoseStream(net, settings, np.zeros(3), seed, 0.3, torch.device("cpu"))
    bounds = [0, *chunks, len(pairs)]
    return np.concatenate([stream.push(pairs[a:b])[2] for a, b in zip(bounds[:-1], bounds[1:])])


@pytest.mark.parametrize("cfg", [
    Audio2HeadposeConfig(),
    Audio2HeadposeConfig(residual_layers=3, residual_blocks=2, residual_channels=16, dilation_channels=24,
                         skip_channels=32, kernel_size=3, cond_channels=64, ncenter=3),
])
def test_incremental_stream_equals_full_recompute(cfg):
    torch.manual_seed(0)
    net = Audio2HeadposeNet(cfg).eval()
    n, ff, seed = 40, 15, 7
    apc = torch.randn(n + ff, 2 * cfg.apc_dim)
    draws = NoiseSource(seed, cfg.ndim)
    noise, uniform = (torch.cat(d) for d in zip(*(draws.draw(i) for i in range(n))))
    full = generate_headpose_full(net, apc, n, ff, noise, uniform, 0.3)
    for chunks in ([], [1, 17, 18], [30]):  # the poses do not depend on how the audio arrives
        fast = pose_stream_samples(net, apc, ff, seed, chunks)
        assert fast.shape == (n, cfg.ndim)
        np.testing.assert_allclose(fast, full.numpy(), atol=1e-4)
    other = pose_stream_samples(net, apc, ff, seed + 1, [])
    assert not np.allclose(fast, other)  # the draws matter: the comparison above is not vacuous


def test_prime_then_steps_equal_convolution():
    torch.manual_seed(1)
    cfg = WaveNetConfig(residual_layers=4, residual_blocks=2, cond_channels=32)
    net = WaveNet(cfg, 12, 25).eval()
    hist, cond = torch.randn(2, 12, 50), torch.randn(2, cfg.cond_channels, 50)
    ref = net(hist, cond).transpose(1, 2).detach().numpy()  # (B, L, C)
    inc = IncrementalWaveNet(net, batch_size=2)
    c = inc.project_condition(cond.transpose(1, 2))
    h = hist.transpose(1, 2).numpy()
    first = inc.prime(h[:, :20], c[:, :20])
    steps = [inc.step(h[:, t], c[:, t]) for t in range(20, 50)]
    np.testing.assert_allclose(first, ref[:, :20], atol=1e-4)
    np.testing.assert_allclose(np.stack(steps, 1), ref[:, 20:], atol=1e-4)


def test_gmm_nll_matches_gaussian_and_sampling_statistics():
    torch.manual_seed(2)
    mu, sigma = torch.randn(1000, 12), torch.rand(1000, 12) + 0.5
    out = torch.cat([torch.zeros(1000, 1), mu, -sigma.log()], 1)
    x = mu + sigma * torch.randn(1000, 12)
    ref = -torch.distributions.Normal(mu, sigma).log_prob(x).mean()
    assert torch.allclose(gmm_nll(out, x, 1, 12), ref, atol=1e-5)
    one = out[:1].expand(20000, -1)
    samples = gmm_sample(one, 1, 12, 0.5, torch.randn(20000, 12))
    np.testing.assert_allclose(samples.std(0).numpy(), 0.5 * sigma[0].numpy(), rtol=0.05)


def test_slow_noise_is_ar1_of_the_independent_draws_across_blocks():
    n, tau = NOISE_BLOCK + 300, 10.0  # past a block boundary: the filter carries on
    plain, slow = NoiseSource(4, 12), NoiseSource(4, 12, tau)
    e = torch.cat([plain.draw(i)[0] for i in range(n)]).double().numpy()
    y = torch.cat([slow.draw(i)[0] for i in range(n)]).double().numpy()
    np.testing.assert_allclose(y, ar1(e, tau), atol=1e-5)
    assert abs(y.std() - 1) < 0.1 and np.corrcoef(y[1:, 0], y[:-1, 0])[0, 1] > 0.8  # unit variance, slow
    assert torch.equal(slow.draw(n - 1)[1], plain.draw(n - 1)[1])  # the mixture choice draws are untouched
