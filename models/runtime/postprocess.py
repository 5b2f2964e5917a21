"""Post-processing of predicted mouth landmarks (LSP §1.7-§1.8; smoothing is in smoothing.py), and
explicit head poses read from a file (demo --pose_file).

Two of the original's choices are fixed here (LSP §5), each behind a config switch:
* the lip-intersection fix moves the outer lips of each flipped frame by that frame's own half-gap,
  not by one mean over the whole clip (which also made it non-causal);
* the predicted jaw points (4-10) are used (`Audio2Mouth.use_jaw`), where the original discarded
  them and left the jaw still while the lips moved.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.runtime.settings import MouthSettings
from util.errors import InputError
from util.io import check_array, load_npz
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

EYE_REPLAY_START = 10  # LSP §1.8: eye replay starts at training frame 10
Y = 1  # the vertical axis of the 3D landmark space (pointing up)

if TYPE_CHECKING:
    from datasets.identity import IdentityAssets


def amplify_lips(disp: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Scale the lip displacements (points 46-63) per axis (config `Audio2Mouth.AMP`).

    Args:
        disp: (N, 73, 3) displacements from the mean shape; gains: (x, y, z).
    """
    out = disp.copy()
    out[:, LIPS] *= np.asarray(gains, dtype=np.float64)
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


def mouth_faces(disp: np.ndarray, assets: IdentityAssets, base_pts3d: np.ndarray, settings: MouthSettings,
                first_frame: int) -> np.ndarray:
    """Smoothed mouth displacements (m, 25, 3) of frames first_frame.. -> full pose-free faces (m, 73, 3).

    The 25 mouth points carry the prediction (lips amplified, then de-intersected); the rest is the mean
    of the tracked training landmarks, with the training video's eye motion (blinks) replayed
    cyclically from its frame 10 on (LSP §1.7-§1.8).
    """
    m = len(disp)
    full = np.zeros((m, NUM_POINTS, 3))
    full[:, MOUTH] = disp
    mouth = fix_lip_intersection(amplify_lips(full, settings.amp_gains) + assets.mean_pts3d[None])
    face = np.repeat(base_pts3d[None].astype(np.float64), m, 0)
    points = LIPS + JAW if settings.use_jaw else LIPS
    face[:, points] = mouth[:, points]
    tracked = assets.tracked_pts3d
    start = EYE_REPLAY_START if len(tracked) > EYE_REPLAY_START else 0
    frames = start + (first_frame + np.arange(m)) % (len(tracked) - start)
    face[:, EYES] = tracked[frames][:, EYES]
    return face


def load_pose_file(path: Path, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Explicit head poses: rotation (N, 3) degrees and translation (N, 3), looped back and forth to N.

    Accepts .npy/.txt/.csv with rows [rot x, y, z, trans x, y, z] or an .npz with `rot_angles` (T, 3)
    and `trans` (T, 3[, 1]) such as an identity's 3d_fit_data.npz.
    """
    what = "--pose_file"
    if path.suffix == ".npz":
        data = load_npz(path, what, ("rot_angles", "trans"))
        rot, trans = (np.asarray(data[k]) for k in ("rot_angles", "trans"))
        if rot.dtype.kind not in "biuf" or trans.dtype.kind not in "biuf" or rot.size % 3 or trans.size % 3:
            raise InputError(f"{what} {path}: rot_angles and trans must be numbers, 3 per frame")
        poses = np.concatenate([rot.reshape(-1, 3), trans.reshape(-1, 3)], 1) if len(rot) == len(trans) else None
        if poses is None:
            raise InputError(f"{what} {path}: rot_angles has {len(rot)} frames but trans {len(trans)}")
    else:
        from util.errors import require_file

        require_file(path, what)
        try:
            poses = (np.load(path, allow_pickle=False) if path.suffix == ".npy"
                     else np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2))
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"{what} {path}: cannot be read as numbers ({' '.join(str(err).split())})") from err
    poses = check_array(poses, path, what, (-1, 6)).astype(np.float64)
    if len(poses) == 0:
        raise InputError(f"{what} {path}: holds no poses")
    period = max(1, 2 * len(poses) - 2)
    idx = np.arange(n_frames) % period
    idx = np.where(idx < len(poses), idx, period - idx)  # ping-pong: no jump when the sequence wraps
    return poses[idx, :3], poses[idx, 3:]
