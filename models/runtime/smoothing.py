"""Temporal smoothing that streams: the same numbers whether frames arrive one by one or all at once.

* `SymmetricSmoother`: Gaussian over [t - r, t + r] with mirror ('reflect', as scipy) at both ends; it
  needs r frames of lookahead, so r is bounded to keep a live system's latency (LSP smoothed the mouth
  with 4 sigma on each side and the head with up to 40 frames ahead, which a live system cannot wait for).
* `CausalSmoother`: a one-sided (past-only) half Gaussian, renormalised at the start: no lookahead at
  all, a small lag, used for head motion, where a lag of ~100 ms is invisible.
Offline runs use the same classes (push everything, then finish), so streaming equals offline.
"""

from __future__ import annotations

import math

import numpy as np

TRUNCATE = 4.0  # sigmas covered by a kernel


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Half-sample symmetric indices into [0, n): -1 -> 0, -2 -> 1, n -> n - 1 (scipy's 'reflect')."""
    k = np.mod(index, 2 * n)
    return np.where(k >= n, 2 * n - 1 - k, k)


class SymmetricSmoother:
    """Gaussian smoothing along axis 0 with at most `max_lookahead` frames of lookahead."""

    def __init__(self, sigma: float, max_lookahead: int) -> None:
        self.radius = 0 if sigma <= 0 else min(int(max_lookahead), math.ceil(TRUNCATE * sigma))
        k = np.arange(-self.radius, self.radius + 1)
        w = np.exp(-0.5 * (k / sigma) ** 2) if sigma > 0 else np.ones(1)
        self.weights = w / w.sum()
        self.rows: np.ndarray | None = None  # frames first..received-1
        self.first = self.received = self.emitted = 0

    def _emit(self, stop: int, total: int | None) -> np.ndarray:
        if stop <= self.emitted:
            return self.rows[:0]
        t = np.arange(self.emitted, stop)[:, None] + np.arange(-self.radius, self.radius + 1)[None]
        idx = np.where(t < 0, -t - 1, t) if total is None else _mirror(t, total)
        out = np.tensordot(self.weights, self.rows[idx - self.first], axes=([0], [1]))  # (m, ...)
        self.emitted = stop
        keep = max(0, min(self.emitted - self.radius, self.received - self.radius) - self.first)
        if self.emitted > 2 * self.radius:  # the start's mirror needs frames 0..r-1 until then
            self.rows, self.first = self.rows[keep:], self.first + keep
        return out

    def push(self, x: np.ndarray) -> np.ndarray:
        """Add frames (k, ...); returns the smoothed frames whose lookahead is now complete."""
        self.rows = x.copy() if self.rows is None else np.concatenate([self.rows, x])
        self.received += len(x)
        return self._emit(max(self.emitted, self.received - self.radius), None)

    def finish(self) -> np.ndarray:
        """The remaining frames, mirrored at the end."""
        if self.rows is None:
            return np.zeros((0,))
        return self._emit(self.received, self.received)


class CausalSmoother:
    """y[t] = sum_k w_k x[t - k] / sum_k w_k over the frames that exist, w_k = exp(-k^2 / 2 sigma^2).

    `start` (one frame's values): the frames before the first are taken to hold it, so the output eases in
    from `start` instead of beginning at the first frame, however far that one is from it."""

    def __init__(self, sigma: float, start: np.ndarray | None = None) -> None:
        self.length = math.ceil(TRUNCATE * sigma) + 1 if sigma > 0 else 1
        k = np.arange(self.length)
        self.weights = np.exp(-0.5 * (k / sigma) ** 2) if sigma > 0 else np.ones(1)
        self.past: np.ndarray | None = None  # the last length-1 frames, oldest first
        if start is not None and self.length > 1:
            self.past = np.repeat(np.asarray(start, np.float64)[None], self.length - 1, axis=0)

    def push(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return x
        hist = x if self.past is None else np.concatenate([self.past, x])
        start = len(hist) - len(x)
        out = np.empty_like(x, dtype=np.float64)
        for i in range(len(x)):
            t = start + i
            lo = max(0, t - self.length + 1)
            w = self.weights[: t - lo + 1][::-1]  # weights of frames lo..t
            out[i] = np.tensordot(w / w.sum(), hist[lo : t + 1], axes=([0], [0]))
        self.past = hist[-(self.length - 1) :] if self.length > 1 else hist[:0]
        return out
