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
