"""Losses and the Gaussian-mixture head shared by training and sampling.

GMM layout of a network output (..., ncenter * (1 + 2 * ndim)): [mixture logits (ncenter),
means (ncenter * ndim), -log sigma (ncenter * ndim)] (LSP §1.6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def split_gmm(out: torch.Tensor, ncenter: int, ndim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., C) -> logits (..., nc), mu (..., nc, ndim), neg_log_sigma (..., nc, ndim)."""
    expected = ncenter * (1 + 2 * ndim)
    if out.shape[-1] != expected:
        raise ValueError(f"GMM output has {out.shape[-1]} channels, expected {expected} "
                         f"for ncenter={ncenter}, ndim={ndim}")
    lead = out.shape[:-1]
    logits = out[..., :ncenter]
    mu = out[..., ncenter : ncenter * (1 + ndim)].reshape(*lead, ncenter, ndim)
    neg_log_sigma = out[..., ncenter * (1 + ndim) :].reshape(*lead, ncenter, ndim)
    return logits, mu, neg_log_sigma


def gmm_nll(out: torch.Tensor, target: torch.Tensor, ncenter: int, ndim: int, sigma_min: float = 0.03) -> torch.Tensor:
    """Mixture negative log-likelihood per dimension, averaged over all leading dims (LSP §4.1).

    With one centre this is exactly the original's mean over (batch, time, dim) of
    0.5 ln 2pi - s + 0.5 ((x - mu) e^s)^2 with s = -log sigma clamped to <= ln(1 / sigma_min).
    Works on any device (the original's version called .cuda()).
    """
    logits, mu, s = split_gmm(out, ncenter, ndim)
    s = s.clamp(max=math.log(1.0 / sigma_min))
    z = (target.unsqueeze(-2) - mu) * torch.exp(s)  # (..., nc, ndim)
    log_prob = (-0.5 * math.log(2 * math.pi) + s - 0.5 * z**2).sum(-1)  # (..., nc)
    log_mix = torch.logsumexp(F.log_softmax(logits, dim=-1) + log_prob, dim=-1)  # (...)
    return -(log_mix / ndim).mean()


def gmm_sample(
    out: torch.Tensor, ncenter: int, ndim: int, sigma_scale: float,
    noise: torch.Tensor, uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one sample per row: mu_c + noise * exp(-s_c) * sigma_scale (no sigma floor, LSP §1.6).

    Args:
        out: (B, C) mixture parameters; noise: (B, ndim) standard normal draws;
        uniform: (B,) draws in [0, 1) choosing the component (unused with one centre).
    Returns:
        (B, ndim) samples.
    """
    logits, mu, s = split_gmm(out, ncenter, ndim)
    if ncenter == 1:
        comp = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
    else:
        cdf = torch.cumsum(F.softmax(logits, dim=-1), dim=-1)
        comp = torch.searchsorted(cdf, uniform[:, None].to(cdf)).clamp(max=ncenter - 1)[:, 0]
    rows = torch.arange(out.shape[0], device=out.device)
    return mu[rows, comp] + noise.to(mu) * torch.exp(-s[rows, comp]) * sigma_scale


def lsgan_loss(pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Least-squares GAN loss (pix2pixHD's use_lsgan): MSE against 1 (real) or 0 (fake)."""
    return F.mse_loss(pred, torch.full_like(pred, 1.0 if target_is_real else 0.0))


def multiscale_gan_loss(outputs: list[list[torch.Tensor]], target_is_real: bool) -> torch.Tensor:
    """LSGAN on the last output of every discriminator scale, summed over scales."""
    return sum(lsgan_loss(scale[-1], target_is_real) for scale in outputs)


def feature_matching_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    """pix2pixHD feature matching: L1 between D's intermediate activations of fake and (detached) real.

    Averaged over scales and intermediate layers with pix2pixHD's 4 / (n_layers + 1) layer weight; the
    final prediction is left out and the scale count is the real one (the release had both wrong, LSP §5).
    """
    n_scales = len(fake)
    total = 0.0
    for f_scale, r_scale in zip(fake, real):
        n_inter = len(f_scale) - 1
        for f, r in zip(f_scale[:-1], r_scale[:-1]):
            total = total + F.l1_loss(f, r.detach()) * (4.0 / n_inter) / n_scales
    return total


class VGGPerceptualLoss(torch.nn.Module):
    """L1 between VGG19 activations (relu1_1 ... relu5_1) of two images in [-1, 1] (pix2pixHD).

    Needs torchvision and ImageNet VGG19 weights already on disk; `available()` tells whether both are.
    """

    LAYER_ENDS = (2, 7, 12, 21, 30)
    WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import VGG19_Weights, vgg19

        features = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features.eval()
        self.slices = torch.nn.ModuleList(features[a:b] for a, b in zip((0, *self.LAYER_ENDS[:-1]), self.LAYER_ENDS))
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @staticmethod
    def available() -> tuple[bool, str]:
        """(True, '') when torchvision imports and the VGG19 weights are cached; else (False, reason)."""
        try:
            from torchvision.models import VGG19_Weights
        except Exception as err:  # torchvision missing or broken against this torch (a known CPU-wheel clash)
            return False, f"torchvision unavailable ({type(err).__name__})"
        from pathlib import Path

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_Weights.IMAGENET1K_V1.url).name
        return (True, "") if cached.is_file() else (False, f"VGG19 weights not found at {cached}")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = ((x + 1) / 2 - self.mean) / self.std, ((y + 1) / 2 - self.mean) / self.std
        loss = 0.0
        for weight, block in zip(self.WEIGHTS, self.slices):
            x, y = block(x), block(y)
            loss = loss + weight * F.l1_loss(x, y.detach())
        return loss
