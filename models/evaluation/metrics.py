"""Evaluation metrics that need no downloaded weights: PSNR, SSIM, mouth landmark distance, correlation."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from util.landmarks import MOUTH

SSIM_SIGMA = 1.5  # Wang et al. 2004: 11x11 Gaussian window, sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PIXEL_MAX = 255.0
CROP_REFERENCE = 512  # M-LMD is reported in pixels of a 512 crop, as the release's crops


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8-range images; inf when identical."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(PIXEL_MAX**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Gaussian window, per channel, averaged) of two uint8-range images (H, W[, C])."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (SSIM_K1 * PIXEL_MAX) ** 2, (SSIM_K2 * PIXEL_MAX) ** 2
    values = []
    for ch in range(x.shape[2]):
        f = lambda im: gaussian_filter(im, SSIM_SIGMA, truncate=3.5)  # noqa: E731 - 11-tap window
        xi, yi = x[..., ch], y[..., ch]
        mx, my = f(xi), f(yi)
        vx, vy, cov = f(xi * xi) - mx**2, f(yi * yi) - my**2, f(xi * yi) - mx * my
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(s.mean())
    return float(np.mean(values))


def mouth_lmd(pred: np.ndarray, real: np.ndarray, px_per_unit: float) -> float:
    """Mean distance over frames and the 25 mouth points of two (N, 73, 3|2) landmark sets, in pixels."""
    return float(np.linalg.norm(pred[:, MOUTH] - real[:, MOUTH], axis=-1).mean() * px_per_unit)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two series (nan when either is constant)."""
    n = min(len(a), len(b))
    a, b = np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64)
    if n < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pose_statistics(rot: np.ndarray, trans: np.ndarray, fps: float) -> dict[str, list[float] | float]:
    """Per-axis std of rotation (degrees) and translation, and mean speed (degrees / s, units / s)."""
    return {"rot_std_deg": rot.std(0).tolist(), "trans_std": trans.std(0).tolist(),
            "rot_speed_deg_s": float(np.linalg.norm(np.diff(rot, axis=0), axis=1).mean() * fps),
            "trans_speed_s": float(np.linalg.norm(np.diff(trans, axis=0), axis=1).mean() * fps)}


def window_std_range(series: list[np.ndarray], window: int, percentiles: tuple[float, float] = (5, 95)
                     ) -> list[list[float]]:
    """Per-axis [low, high] percentiles of the std of `series` (clips of (n, k)) over all windows of `window`
    frames (one every tenth of a window; clips shorter than a window count whole): how much a person's own spread
    varies over stretches as long as a held-out clip."""
    stds = []
    for x in series:
        if len(x) <= window:
            stds.append(x.std(0))
            continue
        step = max(1, window // 10)
        stds += [x[s : s + window].std(0) for s in range(0, len(x) - window + 1, step)]
    return np.percentile(np.array(stds), percentiles, axis=0).T.tolist()


def mean_pose_statistics(draws: list[dict]) -> dict:
    """`pose_statistics` of several head-motion draws of the same speech: each figure's mean over the draws,
    the number of draws, and the per-axis range of the rotation std (`rot_std_deg_range`: [min, max] per axis)."""
    mean = {k: (np.mean([d[k] for d in draws], axis=0).tolist() if isinstance(draws[0][k], list)
                else float(np.mean([d[k] for d in draws]))) for k in draws[0]}
    stds = np.array([d["rot_std_deg"] for d in draws])
    return {**mean, "draws": len(draws), "rot_std_deg_range": np.stack([stds.min(0), stds.max(0)], 1).tolist()}
