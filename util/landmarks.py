"""The 73-point LSP landmark layout and the conditional feature map drawn from it (LSP §1.8, §1.10).

Layout (indices into the 73 points): contour 0-14, right brow 15-20, left brow 21-26, eyes 27-34 and
65-72, nose 35-45, outer lips 46-57, inner lips 58-63, point 64 unused by drawing.
"""

from __future__ import annotations

import cv2
import numpy as np

NUM_POINTS = 73
NUM_SHOULDER_POINTS = 18  # LSP §1.9: two polylines of 9 points
SHOULDER_POLYLINE = 9

JAW = list(range(4, 11))  # contour points the mouth model predicts (and the original discards)
LIPS = list(range(46, 64))  # 12 outer + 6 inner lip points
MOUTH = JAW + LIPS  # the 25 Audio2Feature points, in output order (LSP §1.5)
EYES = [27, 65, 28, 68, 29, 67, 30, 66, 31, 72, 32, 69, 33, 70, 34, 71]  # the release's "eye_brow_indices"
UPPER_INNER_LIP = [63, 62, 61]  # paired with LOWER_INNER_LIP for the lip-intersection fix (LSP §1.7)
LOWER_INNER_LIP = [58, 59, 60]
UPPER_OUTER_LIP = [47, 48, 49, 50, 51]
LOWER_OUTER_LIP = [57, 56, 55, 54, 53]
OUTER_LIP_RING = list(range(46, 58))
CONTOUR_ENDS = (0, 14)  # the contour's ends at the ears: their distance is the face width
INNER_LIP_MID = (62, 59)  # upper and lower inner-lip mid points: their distance is the mouth opening
NUM_CANDIDATES = 4  # LSP §1.11: the renderer sees the feature map and four candidate images of the person
MOUTH_MARGIN = 0.25  # the mouth box: the lips' box grown by 25 % of its side on each side
MIN_CROP_PX = 8  # smallest mouth box side, for a face too small or landmarks collapsed to a point

# MediaPipe Face Mesh vertex of each of the 73 LSP points (image-left = the person's right side).
# Mesh vertices are fixed on the face, so the contour does not slide: the "fix_contour" layout.
MEDIAPIPE_INDEX = [
    234, 132, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 361, 454,  # 0-14 contour
    70, 63, 105, 107, 65, 53,  # 15-20 right brow: outer, upper..., inner, lower...
    336, 334, 293, 300, 283, 295,  # 21-26 left brow: inner, upper..., outer, lower...
    33, 159, 133, 145,  # 27-30 right eye: outer corner, top, inner corner, bottom
    362, 386, 263, 374,  # 31-34 left eye: inner corner, top, outer corner, bottom
    168, 197, 5, 4, 98, 97, 2, 326, 327, 1, 6,  # 35-45 nose: bridge to tip, nostrils, extra
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # 46-57 outer lips from the right corner
    178, 14, 402, 311, 13, 81,  # 58-63 inner lips: lower (58-60), upper (61-63)
    164,  # 64 (never drawn)
    160, 144, 153, 158, 387, 373, 380, 385,  # 65-72 eyelid points between corners and mid-points
]
assert len(MEDIAPIPE_INDEX) == NUM_POINTS

# Polylines of the feature map (LSP §1.10), each drawn as connected segments.
FACE_POLYLINES: list[list[int]] = [
    list(range(0, 15)),  # contour
    [15, 16, 17, 18, 18, 19, 20, 15],  # right brow (closed)
    [21, 22, 23, 24, 24, 25, 26, 21],  # left brow (closed)
    list(range(35, 44)),  # nose (44, 45 not drawn)
    [27, 65, 28, 68, 29], [29, 67, 30, 66, 27],  # right eye
    [33, 69, 32, 72, 31], [31, 71, 34, 70, 33],  # left eye
    list(range(46, 53)), [52, 53, 54, 55, 56, 57, 46],  # outer lips
    [46, 63, 62, 61, 52], [52, 60, 59, 58, 46],  # inner lips
]
SHOULDER_POLYLINES = [list(range(i * SHOULDER_POLYLINE, (i + 1) * SHOULDER_POLYLINE)) for i in range(2)]
LINE_THICKNESS = 2  # LSP §1.10: cv2.line thickness, 8-connected, not anti-aliased
LINE_VALUE = 255
COORD_LIMIT_FACTOR = 8  # points further than 8 image sides away are clamped before drawing


def face_width(points: np.ndarray) -> np.ndarray:
    """Width of the face (contour end to end) per frame of (..., 73, D) landmarks: (...)."""
    a, b = CONTOUR_ENDS
    return np.linalg.norm(points[..., b, :] - points[..., a, :], axis=-1)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip opening (upper mid to lower mid) per frame of (..., 73, D) landmarks: (...)."""
    upper, lower = INNER_LIP_MID
    return np.linalg.norm(points[..., upper, :] - points[..., lower, :], axis=-1)


def mouth_box(landmarks2d_mouth: np.ndarray, image_shape: tuple[int, ...],
              margin: float = MOUTH_MARGIN) -> tuple[int, int, int, int]:
    """Square box (x0, y0, x1, y1) around mouth points (P, 2) in pixels, grown by `margin` of its side
    on each side and shifted (not shrunk) to stay inside an image of `image_shape` (H, W[, C])."""
    pts = np.asarray(landmarks2d_mouth, np.float64)
    h, w = image_shape[:2]
    centre = (pts.min(0) + pts.max(0)) / 2
    side = int(np.ceil(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), MIN_CROP_PX) * (1 + 2 * margin)))
    side = min(side, h, w)
    x0 = int(np.clip(round(centre[0] - side / 2), 0, w - side))
    y0 = int(np.clip(round(centre[1] - side / 2), 0, h - side))
    return x0, y0, x0 + side, y0 + side


def draw_polylines(canvas: np.ndarray, points: np.ndarray, polylines: list[list[int]],
                   thickness: int = LINE_THICKNESS) -> None:
    """Draw each index sequence of `polylines` over `points` (P, 2) into the uint8 `canvas`, in place.

    Coordinates are truncated toward zero with int(), as the original does; NaN and far-off values
    (e.g. from an untrained model) are clamped so drawing never fails.
    """
    limit = COORD_LIMIT_FACTOR * max(canvas.shape)
    pts = np.trunc(np.clip(np.nan_to_num(points, nan=-limit), -limit, limit)).astype(np.int32)
    for seq in polylines:
        for a, b in zip(seq[:-1], seq[1:]):
            cv2.line(canvas, (int(pts[a, 0]), int(pts[a, 1])), (int(pts[b, 0]), int(pts[b, 1])),
                     LINE_VALUE, thickness, cv2.LINE_8)


def feature_map(landmarks2d: np.ndarray, shoulders2d: np.ndarray | None, size: int | tuple[int, int],
                thickness: int = LINE_THICKNESS) -> np.ndarray:
    """The one-channel line drawing of the face (73 points) and shoulders (18 points).

    Args:
        landmarks2d: (73, 2) pixel coordinates in the crop; shoulders2d: (18, 2) or None.
        size: side of the square crop, or (height, width).
    Returns:
        (H, W) uint8 image, 0 background and 255 lines.
    """
    h, w = (size, size) if isinstance(size, int) else size
    canvas = np.zeros((h, w), np.uint8)
    draw_polylines(canvas, landmarks2d, FACE_POLYLINES, thickness)
    if shoulders2d is not None:
        draw_polylines(canvas, shoulders2d, SHOULDER_POLYLINES, thickness)
    return canvas
