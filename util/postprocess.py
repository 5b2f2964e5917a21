"""Post-processing of predicted mouth landmarks (LSP §1.7-§1.8); smoothing is in util/smoothing.py.

Two of the original's choices are fixed here (LSP §5), each behind a config switch:
* the lip-intersection fix moves the outer lips of each flipped frame by that frame's own half-gap,
  not by one mean over the whole clip (which also made it non-causal);
* the predicted jaw points (4-10) are used (`Audio2Mouth.use_jaw`), where the original discarded
  them and left the jaw still while the lips moved.
"""

from __future__ import annotations

import numpy as np

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
EYE_REPLAY_START = 10  # LSP §1.8: eye replay starts at training frame 10
Y = 1  # the vertical axis of the 3D landmark space (pointing up)


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


def mouth_faces(disp: np.ndarray, assets, base_pts3d: np.ndarray, amp: list, use_jaw: bool,  # noqa: ANN001
                first_frame: int) -> np.ndarray:
    """Smoothed mouth displacements (m, 25, 3) of frames first_frame.. -> full pose-free faces (m, 73, 3).

    The 25 mouth points carry the prediction (lips amplified by `amp`, then de-intersected); the rest is
    the mean of the tracked training landmarks, with the training video's eye motion (blinks) replayed
    cyclically from its frame 10 on (LSP §1.7-§1.8). `assets` is the identity's IdentityAssets.
    """
    m = len(disp)
    full = np.zeros((m, NUM_POINTS, 3))
    full[:, MOUTH] = disp
    mouth = fix_lip_intersection(amplify_lips(full, str(amp[0]), [float(g) for g in amp[1:]]) + assets.mean_pts3d[None])
    face = np.repeat(base_pts3d[None].astype(np.float64), m, 0)
    points = LIPS + JAW if use_jaw else LIPS
    face[:, points] = mouth[:, points]
    tracked = assets.tracked_pts3d
    start = EYE_REPLAY_START if len(tracked) > EYE_REPLAY_START else 0
    frames = start + (first_frame + np.arange(m)) % (len(tracked) - start)
    face[:, EYES] = tracked[frames][:, EYES]
    return face
