"""The preprocessing overlay video: each crop with its landmarks, head-pose axes and shoulders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from util.geometry import euler_to_matrix, project
from util.landmarks import FACE_POLYLINES, SHOULDER_POLYLINES
from util.video import VideoWriter

AXIS_LENGTH = 8.0  # head-pose axes, in the units of the 3D landmarks (MediaPipe centimetres)
COLORS = {"face": (0, 255, 0), "shoulders": (255, 220, 0), "x": (255, 0, 0), "y": (0, 255, 0), "z": (0, 128, 255)}


class OverlayWriter:
    """Writes overlay frames to an H.264 video (no audio)."""

    def __init__(self, path: Path, size: int, fps: float) -> None:
        self.writer = VideoWriter(path, fps, (size, size))

    def write(self, image: np.ndarray, face2d: np.ndarray, shoulders2d: np.ndarray, rot: np.ndarray,
              trans: np.ndarray, intrinsic: np.ndarray) -> None:
        """Draw on a copy of `image` (RGB crop) and append it."""
        img = image.copy()
        for group, pts in ((FACE_POLYLINES, face2d), (SHOULDER_POLYLINES, shoulders2d)):
            color = COLORS["face"] if group is FACE_POLYLINES else COLORS["shoulders"]
            for seq in group:
                cv2.polylines(img, [np.round(pts[seq]).astype(np.int32)], False, color, 1, cv2.LINE_AA)
        r = euler_to_matrix(rot)
        ends = trans[None] + (r @ (np.eye(3) * AXIS_LENGTH)).T  # (3, 3): x, y, z axis tips
        uv = project(np.concatenate([trans[None], ends]), intrinsic)
        if np.all(np.isfinite(uv)) and np.abs(uv).max() < 1e5:
            o = tuple(np.round(uv[0]).astype(int))
            for tip, name in zip(uv[1:], "xyz"):
                cv2.line(img, o, tuple(np.round(tip).astype(int)), COLORS[name], 2, cv2.LINE_AA)
        self.writer.write(img)

    def close(self) -> None:
        self.writer.close()
