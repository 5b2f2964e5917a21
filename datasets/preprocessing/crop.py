"""The stable crop: one scale and centre per source video, so the head moves inside a fixed frame.

`change_paras` of the release (LSP §2.1): the source frame is resized by `scale`, then a size x size
window centred at (xc, yc) in the resized frame is cut out, zero-padded where it leaves the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from util.landmarks import face_width

FACE_WIDTH_FRACTION = 0.38  # the face (contour 0 to 14) spans this much of the crop width
HEAD_ROOM = 0.12  # the face centre sits this fraction of the crop above the crop centre (room for shoulders)


@dataclass(frozen=True)
class CropParams:
    scale: float  # resize factor of the source frame
    xc: float  # crop centre in the resized frame
    yc: float
    size: int  # crop side in pixels

    @property
    def offset(self) -> np.ndarray:
        """Top-left corner of the crop in the resized frame."""
        return np.array([self.xc - self.size / 2, self.yc - self.size / 2])

    def to_crop(self, uv: np.ndarray) -> np.ndarray:
        """Source-frame pixels (..., 2) -> crop pixels."""
        return uv * self.scale - self.offset

    def intrinsic(self, k_source: np.ndarray) -> np.ndarray:
        """The camera of the crop, from the camera of the source frame: (3, 3)."""
        k = np.asarray(k_source, np.float64).copy()
        k[:2] *= self.scale
        k[0, 2] -= self.offset[0]
        k[1, 2] -= self.offset[1]
        return k

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Resize the frame and cut the crop, zero-padded outside the frame: (size, size, C)."""
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(frame, None, fx=self.scale, fy=self.scale, interpolation=interp)
        x0, y0 = np.floor(self.offset).astype(int)
        out = np.zeros((self.size, self.size, *frame.shape[2:]), frame.dtype)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + self.size, resized.shape[1]), min(y0 + self.size, resized.shape[0])
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = resized[sy0:sy1, sx0:sx1]
        return out


def stable_crop(pts2d: np.ndarray, width: int, height: int, size: int) -> CropParams:
    """One crop for a whole video from its tracked points (N, 73, 2) in source pixels.

    The crop side is the median face width / FACE_WIDTH_FRACTION, at most the frame's shorter side;
    the window is centred on the median face centre (moved down by HEAD_ROOM) and kept inside the frame
    when the frame is large enough. Integer crop offsets keep resampling exact.
    """
    side = min(float(np.median(face_width(pts2d))) / FACE_WIDTH_FRACTION, width, height)
    centre = np.median(pts2d.reshape(-1, 2), axis=0) + [0.0, HEAD_ROOM * side]
    centre = np.clip(centre, side / 2, [width - side / 2, height - side / 2])
    scale = size / side
    x0, y0 = np.round(centre * scale - size / 2)
    return CropParams(float(scale), float(x0 + size / 2), float(y0 + size / 2), size)
