"""Post-processing of predicted mouth landmarks and head poses (LSP §1.7-§1.8).

Two of the original's choices are fixed here (LSP §5), each behind a config switch:
* the lip-intersection fix moves the outer lips of each flipped frame by that frame's own half-gap,
  not by one mean over the whole clip (which also made it non-causal);
* the predicted jaw points (4-10) are used (`Audio2Mouth.use_jaw`), where the original discarded
  them and left the jaw still while the lips moved.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from util.errors import InputError
from util.landmarks import (
    EYES,
    JAW,
    LIPS,
    LOWER_INNER_LIP,
    LOWER_OUTER_LIP,
    MOUTH,
    NUM_POINTS,
    UPPER_INNER_LIP,
    UPPER_OUTER_LIP,
)

ROT_X_OFFSET = 180.0  # LSP §1.7 step 9: training stores rot_x wrapped to [0, 360) minus 180
SMOOTH_TRUNCATE = 4.0  # scipy default; the kernel reaches 4 sigma to each side
EYE_REPLAY_START = 10  # LSP §1.8: eye replay starts at training frame 10
Y = 1  # the vertical axis of the 3D landmark space (pointing up)


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time (axis 0), mode 'reflect'; sigma in frames, 0 = unchanged."""
    if sigma <= 0 or len(x) < 2:
        return x
    return gaussian_filter1d(x, sigma, axis=0, mode="reflect", truncate=SMOOTH_TRUNCATE)


def amplify_lips(disp: np.ndarray, method: str, gains: list[float]) -> np.ndarray:
    """Scale the lip displacements (points 46-63) per axis (config `Audio2Mouth.AMP`).

    Args:
        disp: (N, 73, 3) displacements from the mean shape.
        method: 'XYZ' (gains for x, y, z) or 'XY' (gains for x and y; z unchanged).
    """
    if method == "XYZ" and len(gains) == 3:
        g = np.asarray(gains, dtype=np.float64)
    elif method == "XY" and len(gains) >= 2:
        g = np.asarray([gains[0], gains[1], 1.0])
    else:
        raise InputError(f"config Audio2Mouth.AMP: expected ['XYZ', x, y, z] or ['XY', x, y], got {[method, *gains]}")
    out = disp.copy()
    out[:, LIPS] *= g
    return out


def fix_lip_intersection(pts: np.ndarray) -> np.ndarray:
    """Where the lower inner lip lies above the upper one at all three pairs, close the mouth cleanly.

    Each inner pair meets at its mid height; the outer upper lip is raised and the outer lower lip
    lowered by that frame's mean half-gap, so the lips keep their thickness.

    Args:
        pts: (N, 73, 3) landmarks with y up.
    """
    out = pts.copy()
    upper, lower = out[:, UPPER_INNER_LIP, Y], out[:, LOWER_INNER_LIP, Y]  # (N, 3)
    flipped = np.all(lower > upper, axis=1)
    if not flipped.any():
        return out
    mid = 0.5 * (upper[flipped] + lower[flipped])
    half_gap = 0.5 * (lower[flipped] - upper[flipped]).mean(1, keepdims=True)  # (F, 1)
    out[np.ix_(flipped, UPPER_INNER_LIP, [Y])] = mid[:, :, None]
    out[np.ix_(flipped, LOWER_INNER_LIP, [Y])] = mid[:, :, None]
    out[np.ix_(flipped, UPPER_OUTER_LIP, [Y])] += half_gap[:, :, None]
    out[np.ix_(flipped, LOWER_OUTER_LIP, [Y])] -= half_gap[:, :, None]
    return out


def mouth_landmarks(mouth_disp: np.ndarray, mean_pts3d: np.ndarray, sigma: float, amp: list) -> np.ndarray:
    """Audio2Feature output (N, 75) -> smoothed, amplified, de-intersected (N, 73, 3) mouth shape.

    Only the 25 mouth points carry the prediction; the other points are the mean shape.
    """
    disp = np.zeros((len(mouth_disp), NUM_POINTS, 3))
    disp[:, MOUTH] = mouth_disp.reshape(len(mouth_disp), len(MOUTH), 3)
    disp = amplify_lips(smooth(disp, sigma), str(amp[0]), [float(g) for g in amp[1:]])
    return fix_lip_intersection(disp + mean_pts3d[None])


def assemble_face(mouth: np.ndarray, base_pts3d: np.ndarray, tracked_pts3d: np.ndarray,
                  use_jaw: bool = True) -> np.ndarray:
    """Full pose-free face per frame: the mean face, predicted lips (and jaw), replayed eyes (LSP §1.8).

    Args:
        mouth: (N, 73, 3) from `mouth_landmarks`; base_pts3d: (73, 3) mean of the tracked training
            landmarks; tracked_pts3d: (N_train, 73, 3), whose eye motion (blinks) is replayed cyclically.
    """
    n = len(mouth)
    face = np.repeat(base_pts3d[None].astype(np.float64), n, 0)
    points = LIPS + JAW if use_jaw else LIPS
    face[:, points] = mouth[:, points]
    start = EYE_REPLAY_START if len(tracked_pts3d) > EYE_REPLAY_START else 0
    frames = start + np.arange(n) % (len(tracked_pts3d) - start)
    face[:, EYES] = tracked_pts3d[frames][:, EYES]
    return face


def headpose(pose: np.ndarray, gains: list[float], sigmas: list[float],
             mean_trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sampled (N, >=6) normalised poses -> rotation (N, 3) degrees and translation (N, 3) (LSP §1.7).

    Args:
        gains: [rotation gain, translation gain] (`Headpose.AMP`); sigmas: [rotation, translation]
            smoothing in frames (`Headpose.smooth`); mean_trans: (3,) mean training translation.
    """
    rot = smooth(pose[:, 0:3] * gains[0], sigmas[0])
    trans = smooth(pose[:, 3:6] * gains[1], sigmas[1]) + mean_trans
    rot = rot.copy()
    rot[:, 0] += ROT_X_OFFSET
    return rot, trans
