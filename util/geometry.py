"""Head pose and camera geometry (LSP §1.8-§1.9).

Pose: rotation angles in degrees (x pitch, y yaw, z roll), R = Rz . Ry . Rx, and a translation.
A pose-free 3D landmark set X (P, 3) lands in the image at K . (scale . R . X^T + t), divided by z.
"""

from __future__ import annotations

import numpy as np


def euler_to_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """(..., 3) angles in degrees -> (..., 3, 3) rotation matrices R = Rz Ry Rx."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cx, cy, cz = np.cos(a[..., 0]), np.cos(a[..., 1]), np.cos(a[..., 2])
    sx, sy, sz = np.sin(a[..., 0]), np.sin(a[..., 1]), np.sin(a[..., 2])
    r = np.empty(a.shape[:-1] + (3, 3))
    r[..., 0, 0] = cz * cy
    r[..., 0, 1] = cz * sy * sx - sz * cx
    r[..., 0, 2] = cz * sy * cx + sz * sx
    r[..., 1, 0] = sz * cy
    r[..., 1, 1] = sz * sy * sx + cz * cx
    r[..., 1, 2] = sz * sy * cx - cz * sx
    r[..., 2, 0] = -sy
    r[..., 2, 1] = cy * sx
    r[..., 2, 2] = cy * cx
    return r


def matrix_to_euler(rot: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) angles in degrees, inverse of `euler_to_matrix`.

    Valid for |yaw| < 90 degrees, which holds for a talking head facing the camera.
    """
    rot = np.asarray(rot, dtype=np.float64)
    x = np.arctan2(rot[..., 2, 1], rot[..., 2, 2])
    y = np.arcsin(np.clip(-rot[..., 2, 0], -1.0, 1.0))
    z = np.arctan2(rot[..., 1, 0], rot[..., 0, 0])
    return np.rad2deg(np.stack([x, y, z], -1))


def project(points_cam: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-space points (..., P, 3) with K (3, 3) -> pixels (..., P, 2)."""
    uvw = points_cam @ np.asarray(intrinsic, dtype=np.float64).T
    return uvw[..., :2] / uvw[..., 2:3]


def project_landmarks(pts3d: np.ndarray, rot_deg: np.ndarray, trans: np.ndarray, scale: float,
                      intrinsic: np.ndarray) -> np.ndarray:
    """Pose-free landmarks (N, P, 3) with per-frame rotation (N, 3) and translation (N, 3) -> (N, P, 2)."""
    r = euler_to_matrix(rot_deg)  # (N, 3, 3)
    cam = scale * np.einsum("nij,npj->npi", r, pts3d) + np.asarray(trans)[:, None, :]
    return project(cam, intrinsic)


def shoulder_points(shoulders3d: np.ndarray, ref_trans: np.ndarray, trans: np.ndarray, gain: float) -> np.ndarray:
    """Shoulders follow the head's translation by `gain`, without rotation (LSP §1.9).

    Args:
        shoulders3d: (S, 3) reference shoulder points; ref_trans: (3,) head translation of that frame;
        trans: (N, 3) head translation per frame; gain: `shoulder_AMP`.
    Returns:
        (N, S, 3) camera-space shoulder points.
    """
    return shoulders3d[None] + (np.asarray(trans) - ref_trans)[:, None, :] * gain


# The audio-to-pose model works on normalised poses (LSP §4.1): rot_x wrapped to [0, 360) minus 180, so
# a frontal face (rot_x = 180 in the release's convention) is 0, and the translation minus its mean.
ROT_X_OFFSET = 180.0


def normalise_pose(rot: np.ndarray, trans: np.ndarray, mean_trans: np.ndarray) -> np.ndarray:
    """Camera pose (N, 3) degrees and (N, 3) -> the model's pose (N, 6): [rot - x offset, trans - mean]."""
    r = np.asarray(rot, np.float64).copy()
    r[:, 0] = np.mod(r[:, 0], 360.0) - ROT_X_OFFSET
    return np.concatenate([r, np.asarray(trans, np.float64) - mean_trans], 1)


def denormalise_pose(pose: np.ndarray, mean_trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's pose (N, 6) -> camera rotation (N, 3) degrees and translation (N, 3); inverse of
    `normalise_pose` up to the 360-degree wrap."""
    rot = np.asarray(pose[:, :3], np.float64).copy()
    rot[:, 0] += ROT_X_OFFSET
    return rot, np.asarray(pose[:, 3:6], np.float64) + mean_trans
