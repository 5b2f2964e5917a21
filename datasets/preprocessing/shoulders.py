"""Shoulders: 18 points on the shoulder line, found below the chin, followed with LK optical flow and
lifted to 3D as a billboard at the face's depth (LSP §1.9; the author's description in issue #52).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.signal import medfilt

from util.landmarks import NUM_SHOULDER_POINTS, SHOULDER_POLYLINE, face_width

LK_PARAMS = {"winSize": (21, 21), "maxLevel": 3,
             "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
FB_TOLERANCE = 1.5  # pixels: forward-backward flow disagreement above which a point counts as lost


SEGMENT_SIDE = 128  # pixels: the crop is segmented at this size (GrabCut is ~50 ms there)


def body_mask(rgb: np.ndarray, face2d: np.ndarray) -> np.ndarray:
    """Foreground (person) mask of a crop by GrabCut, seeded with the face, the neck and the image bottom
    as person and the top corners as background: (H, W) bool."""
    h, w = rgb.shape[:2]
    f = SEGMENT_SIDE / max(h, w)
    small = cv2.resize(rgb, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    pts = face2d * f
    face_w = max(float(face_width(pts)), 4.0)
    cx, chin_y = float(pts[[0, 14], 0].mean()), float(pts[7, 1])
    top_y = float(pts[15:27, 1].min())
    mask = np.full((sh, sw), cv2.GC_PR_BGD, np.uint8)
    mask[int(max(0, chin_y + 0.2 * face_w)):, :] = cv2.GC_PR_FGD  # below the chin: probably the body
    band = max(2, sh // 16)
    for x0, x1 in ((0, int(max(0, cx - 1.0 * face_w))), (int(min(sw, cx + 1.0 * face_w)), sw)):
        mask[: max(band, int(top_y)), x0:x1] = cv2.GC_BGD  # beside and above the head: background
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), cv2.GC_FGD)
    neck = [int(cx - 0.25 * face_w), int(chin_y), int(cx + 0.25 * face_w), sh]
    mask[neck[1] : neck[3], max(0, neck[0]) : max(0, neck[2])] = cv2.GC_FGD
    mask[sh - band :, int(max(0, cx - 0.6 * face_w)) : int(min(sw, cx + 0.6 * face_w))] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, 4, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate seeds (e.g. a flat image): keep the seeded guess
        pass
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.resize(fg, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def initial_shoulders(rgb: np.ndarray, face2d: np.ndarray) -> np.ndarray:
    """18 points (2 x 9, from the neck outwards) on the top edge of the body below the chin: (18, 2).

    The body is segmented (`body_mask`); in each sample column the shoulder is the top of the run of
    body pixels that reaches the bottom of the crop (blobs of background taken for the person do not
    count), and a column with no body in view puts its point on the bottom row. Heights get a 3-tap
    median, and going outwards the line may not rise.
    """
    h, w = rgb.shape[:2]
    fg = body_mask(rgb, face2d)
    face_w = max(float(face_width(face2d)), 8.0)
    centre, chin_y = float(face2d[[0, 14], 0].mean()), float(face2d[7, 1])
    start = int(np.clip(chin_y - 0.1 * face_w, 0, h - 1))
    pts = []
    for side in (-1, 1):
        xs = np.clip(centre + side * np.linspace(0.5 * face_w, 1.7 * face_w, SHOULDER_POLYLINE), 1, w - 2)
        ys = []
        for x in xs:
            background = np.flatnonzero(~fg[start:, int(x)])
            ys.append(min(h - 1, start + (background[-1] + 1 if background.size else 0)))
        ys = medfilt(np.asarray(ys, np.float64), 3)  # a single stray column does not bend the line
        ys = np.maximum.accumulate(np.maximum(ys, chin_y))  # outwards the shoulder only falls
        pts.append(np.stack([xs, ys], 1))
    return np.clip(np.concatenate(pts), 0, [w - 1, h - 1]).astype(np.float32)


class ShoulderTracker:
    """Pyramidal Lucas-Kanade tracking of the shoulder points with a forward-backward check.

    Lost points move with the median motion of the points that were tracked well.
    """

    def __init__(self, gray: np.ndarray, points: np.ndarray) -> None:
        if points.shape != (NUM_SHOULDER_POINTS, 2):
            raise ValueError(f"expected {NUM_SHOULDER_POINTS} x 2 shoulder points, got {points.shape}")
        self.prev, self.points = gray, points.astype(np.float32)

    def update(self, gray: np.ndarray) -> np.ndarray:
        p0 = self.points.reshape(-1, 1, 2)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(self.prev, gray, p0, None, **LK_PARAMS)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(gray, self.prev, p1, None, **LK_PARAMS)
        good = (st1[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm(back - p0, axis=2)[:, 0] < FB_TOLERANCE)
        flow = (p1 - p0)[:, 0]
        motion = np.median(flow[good], axis=0) if good.any() else np.zeros(2, np.float32)
        new = np.where(good[:, None], p1[:, 0], self.points + motion)
        h, w = gray.shape
        self.points = np.clip(new, 0, [w - 1, h - 1]).astype(np.float32)
        self.prev = gray
        return self.points.copy()


def lift_billboard(points2d: np.ndarray, depth: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    """Back-project (N, S, 2) crop pixels at a per-frame depth (N,) onto a camera-facing plane: (N, S, 3)."""
    k = np.asarray(intrinsic, np.float64)
    d = np.asarray(depth, np.float64)[:, None]
    x = (points2d[..., 0] - k[0, 2]) * d / k[0, 0]
    y = (points2d[..., 1] - k[1, 2]) * d / k[1, 1]
    return np.stack([x, y, np.broadcast_to(d, x.shape)], -1)
