"""From MediaPipe observations to LSP tracks: segments and gaps, pose, pose-free 3D landmarks, resampling.

Camera model (LSP §1.8): a 2D point is K . (scale . R . X + t) / z with OpenCV axes (x right, y down,
z forward). MediaPipe's face geometry uses a virtual perspective camera with a 63 degree vertical
field of view at the frame centre and OpenGL axes; its face-to-camera matrix gives R and t once the
y and z axes are flipped. A frontal face then has rot_x = 180 degrees, the release's convention.
The pose-free landmarks X = R^T (P - t) back-project each tracked point at its MediaPipe depth, so
projecting them again with (R, t, K) lands on the tracked 2D points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from util.geometry import matrix_to_euler
from util.landmarks import MEDIAPIPE_INDEX

MEDIAPIPE_FOV_Y = 63.0  # degrees: the vertical field of view MediaPipe's face geometry assumes
GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def source_intrinsic(width: int, height: int) -> np.ndarray:
    """MediaPipe's virtual camera for a width x height frame: (3, 3)."""
    f = (height / 2) / np.tan(np.deg2rad(MEDIAPIPE_FOV_Y) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])


def find_segments(valid: np.ndarray, max_gap: int, min_length: int) -> tuple[list[tuple[int, int]], int]:
    """Contiguous runs of tracked frames; gaps of <= max_gap frames are bridged, longer ones split.

    Returns:
        ([(start, end)] with end exclusive and each run >= min_length, frames in dropped short runs).
    """
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return [], 0
    runs, start, prev = [], idx[0], idx[0]
    for i in idx[1:]:
        if i - prev - 1 > max_gap:
            runs.append((int(start), int(prev) + 1))
            start = i
        prev = i
    runs.append((int(start), int(prev) + 1))
    kept = [r for r in runs if r[1] - r[0] >= min_length]
    dropped = sum(r[1] - r[0] for r in runs if r[1] - r[0] < min_length)
    return kept, dropped


def fill_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation in time over the frames where `valid` is False: (N, ...) -> (N, ...)."""
    out = values.astype(np.float64).copy()
    good = np.flatnonzero(valid)
    bad = np.flatnonzero(~valid)
    if bad.size and good.size:
        flat = out.reshape(len(out), -1)
        for c in range(flat.shape[1]):
            flat[bad, c] = np.interp(bad, good, flat[good, c])
    return out


def wrap_rot_x(rot: np.ndarray) -> np.ndarray:
    """rot_x into [0, 360), where a frontal face (180) is far from the wrap (LSP §4.1)."""
    out = rot.copy()
    out[..., 0] = np.mod(out[..., 0], 360.0)
    return out


@dataclass
class Geometry:
    """LSP tracks of one run of frames, in source-frame pixels."""

    pts2d: np.ndarray  # (N, 73, 2) tracked points in the source frame
    pts3d: np.ndarray  # (N, 73, 3) pose-free landmarks (face frame, y up)
    rot: np.ndarray  # (N, 3) degrees, R = Rz Ry Rx, rot_x in [0, 360)
    trans: np.ndarray  # (N, 3) camera-space translation


def lsp_geometry(landmarks: np.ndarray, matrices: np.ndarray, width: int, height: int) -> Geometry:
    """Convert MediaPipe's normalised landmarks (N, 478, 3) and matrices (N, 4, 4) to LSP tracks."""
    k = source_intrinsic(width, height)
    f = k[0, 0]
    rmat = GL_TO_CV @ matrices[:, :3, :3]  # (N, 3, 3)
    trans = (GL_TO_CV @ matrices[:, :3, 3:])[..., 0]  # (N, 3)
    pts = landmarks[:, MEDIAPIPE_INDEX].astype(np.float64)  # (N, 73, 3)
    uv = pts[..., :2] * [width, height]
    tz = trans[:, 2:3]
    depth = tz + pts[..., 2] * width * tz / f  # MediaPipe z is relative depth in frame-width units
    cam = np.stack([(uv[..., 0] - k[0, 2]) * depth / f, (uv[..., 1] - k[1, 2]) * depth / f, depth], -1)
    pts3d = np.einsum("nji,npj->npi", rmat, cam - trans[:, None])  # R^T (P - t)
    rot = wrap_rot_x(matrix_to_euler(rmat))
    return Geometry(uv, pts3d, rot, trans)


def filled_geometry(landmarks: np.ndarray, matrices: np.ndarray, valid: np.ndarray, width: int,
                    height: int) -> Geometry:
    """LSP tracks of a run of frames of which only `valid` ones were tracked: gaps are interpolated in
    time (rotation unwrapped first); needs at least one valid frame."""
    good = np.flatnonzero(valid)
    if good.size == 0:
        raise ValueError("no tracked frame to build the geometry from")
    lms, mats = landmarks.copy(), matrices.copy()
    lms[~valid], mats[~valid] = lms[good[0]], mats[good[0]]  # placeholders, replaced below
    geo = lsp_geometry(lms, mats, width, height)
    rot = np.rad2deg(np.unwrap(np.deg2rad(geo.rot), axis=0))
    return Geometry(fill_gaps(geo.pts2d, valid), fill_gaps(geo.pts3d, valid), wrap_rot_x(fill_gaps(rot, valid)),
                    fill_gaps(geo.trans, valid))


def resample(values: np.ndarray, src_fps: float, dst_fps: float, periodic_deg: bool = False) -> np.ndarray:
    """Linear resampling along time from src_fps to dst_fps: (N, ...) -> (int(N / src * dst), ...).

    With periodic_deg the values are angles in degrees, unwrapped before interpolating.
    """
    n = len(values)
    m = int(n / src_fps * dst_fps)
    x = values.astype(np.float64).reshape(n, -1)
    if periodic_deg:
        x = np.rad2deg(np.unwrap(np.deg2rad(x), axis=0))
    pos = np.minimum(np.arange(m) * src_fps / dst_fps, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo)[:, None]
    out = (1 - w) * x[lo] + w * x[hi]
    out = out.reshape((m, *values.shape[1:]))
    return wrap_rot_x(out) if periodic_deg and out.shape[-1] == 3 else out


def choose_candidates(features: np.ndarray, usable: np.ndarray, count: int = 4) -> list[int]:
    """Frames that cover appearance: farthest-point sampling in a normalised feature space.

    Args:
        features: (N, F), e.g. [mouth opening, yaw, pitch]; usable: (N,) frames that may be chosen.
    Starts at the most typical frame (nearest the median); features are clipped to their 5-95th
    percentiles first so a blurred or extreme frame is not picked for being an outlier.
    """
    idx = np.flatnonzero(usable)
    if idx.size < count:
        raise ValueError(f"need at least {count} usable frames for candidates, found {idx.size}")
    f = features[idx].astype(np.float64)
    lo, hi = np.percentile(f, 5, axis=0), np.percentile(f, 95, axis=0)
    f = (np.clip(f, lo, hi) - np.median(f, 0)) / np.maximum(hi - lo, 1e-9)
    chosen = [int(np.argmin(np.linalg.norm(f, axis=1)))]
    dist = np.linalg.norm(f - f[chosen[0]], axis=1)
    while len(chosen) < count:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(f - f[nxt], axis=1))
    return [int(idx[c]) for c in chosen]
