"""Build an identity from talking-head videos: track, crop, shoulders, clips, the release layout, config.

Steps, each resumable (its output is written last, atomically, and reused by a later run):
  1. track   every frame of each video with MediaPipe (work/<video>.track.npz), extract 16 kHz audio
  2. clips   split at long face gaps, hold out the tail for validation, crop with one stable window
             per video, follow the shoulders, write clips/<clip>/{frames/*.jpg, audio.wav, tracks*.npz}
  3. identity the release's files (mean_pts3d.npy, 3d_fit_data.npz, ...), candidates, lists, config
(4. APC features per clip and APC_feature_base.npy come from the trained encoder: models/apc_model.py.)
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from datasets.identity import CONFIG_DIR, DATA_DIR, IdentityFiles, write_config
from datasets.preprocessing.clips import Clip, plan_clips, write_clips
from datasets.preprocessing.overlay import OverlayWriter
from datasets.preprocessing.release import write_identity_files
from datasets.preprocessing.tracker import ensure_landmarker, track_frames
from util.audio import SAMPLE_RATE, load_audio
from util.errors import InputError, require_file
from util.geometry import project_landmarks
from util.io import load_npz, read_json, save_npz, write_json
from util.landmarks import face_width
from util.log import git_commit
from util.video import VideoReader, probe

log = logging.getLogger("lsp")


@dataclass
class Settings:
    """What scripts/preprocess.py passes in (its flags, typed)."""

    identity: str
    videos: list[Path]
    audios: list[Path | None]
    size: int = 512
    fps: float = 60.0
    val_fraction: float = 0.1
    max_gap: float = 0.5
    min_clip: float = 2.0
    min_total: float = 20.0
    candidates: list[int] | None = None
    landmarker: Path | None = None
    force: bool = False
    data_root: Path = DATA_DIR
    config_dir: Path = CONFIG_DIR
    overlay: bool = True
    jpeg_quality: int = 95

    @property
    def root(self) -> Path:
        return self.data_root / self.identity


def _source_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:10]


def check_target(s: Settings) -> dict | None:
    """The existing meta.json when resuming the same sources; refuse a foreign or different identity."""
    meta_path = IdentityFiles(s.root).meta
    if not s.root.exists() or s.force:
        return None
    if not meta_path.is_file():
        raise InputError(f"--id {s.identity}: {s.root} already exists and was not made by preprocess.py; "
                         "choose another --id, or pass --force to write into it")
    meta = read_json(meta_path, "preprocessing record")
    same = [v["key"] for v in meta.get("sources", [])] == [_source_key(v) for v in s.videos]
    if not same:
        raise InputError(f"--id {s.identity}: {s.root} holds an identity made from other videos "
                         f"({', '.join(v['path'] for v in meta.get('sources', []))}); pass --force to redo it")
    return meta


def track_video(s: Settings, i: int, model: Path) -> dict:
    """Step 1 for video i: MediaPipe on every frame, and its audio at 16 kHz; cached in work/."""
    video = s.videos[i]
    out = IdentityFiles(s.root).work / f"{video.stem}_{_source_key(video)}.track.npz"
    if out.is_file() and not s.force:
        return load_npz(out, "tracking cache")
    reader = VideoReader(video)
    audio = load_audio(s.audios[i], SAMPLE_RATE, what="--audio") if s.audios[i] else _video_audio(video)
    track = track_frames(reader, reader.fps, model, max(reader.num_frames, 1), f"track {video.name}")
    data = {"landmarks": track.landmarks, "matrices": track.matrices, "blendshapes": track.blendshapes,
            "valid": track.valid, "fps": np.float64(reader.fps), "size": np.array([reader.width, reader.height]),
            "audio": audio, "multi_face_frames": np.int64(track.multi_face_frames)}
    save_npz(out, compressed=True, **data)
    return data


def _video_audio(video: Path) -> np.ndarray:
    if probe(video)["audio"] is None:
        raise InputError(f"video {video} has no audio stream; give the speech with --audio FILE")
    return load_audio(video, SAMPLE_RATE, what="video")


RIGID_POINTS = [27, 29, 31, 33, 35, 36, 37]  # eye corners and nose bridge: move only with the head


def reprojection_error(s: Settings, clips: list[Clip]) -> dict:
    """Pixels between the stored pose-free 3D landmarks projected with the stored pose and camera, and
    the tracked 2D points, over all clips at the source rate; and how still the rigid points of the
    pose-free landmarks stay (their std over time, relative to the face width), which measures how well
    the head pose explains the motion."""
    errs, rigid = [], []
    for c in clips:
        d = load_npz(IdentityFiles(s.root).clip(c.name).tracks, "clip tracks")
        uv = project_landmarks(d["pts3d"], d["rot"], d["trans"], 1.0, d["intrinsic"])
        errs.append(np.linalg.norm(uv - d["pts2d"], axis=-1).ravel())
        rigid.append(d["pts3d"][:, RIGID_POINTS].std(0).mean() / face_width(d["pts3d"]).mean())
    e = np.concatenate(errs)
    return {"mean_px": float(e.mean()), "max_px": float(e.max()), "p99_px": float(np.percentile(e, 99)),
            "rigid_point_std_over_face_width": float(np.mean(rigid))}


def finished_meta(root: Path, flag: str) -> dict:
    """The meta.json of a finished preprocessing run in `root`; InputError naming `flag` otherwise."""
    files = IdentityFiles(root)
    meta = read_json(files.meta, "preprocessing record") if files.meta.is_file() else {}
    if meta.get("status") != "done":
        raise InputError(f"{flag}: {root} has no finished preprocessing (run scripts/preprocess.py --video ... first)")
    return meta


def run(s: Settings) -> dict:
    """Run steps 1-3; returns the meta dict written to data/<id>/meta.json."""
    for v, a in zip(s.videos, s.audios):
        require_file(v, "video")
        if a is not None:
            require_file(a, "--audio file")
    meta = check_target(s)
    s.root.mkdir(parents=True, exist_ok=True)
    files = IdentityFiles(s.root)
    if meta is None:  # claim the folder at once, so an interrupted run can be resumed
        write_json(files.meta, {"status": "in progress",
                                "sources": [{"path": str(v), "key": _source_key(v)} for v in s.videos]})
    model = ensure_landmarker(s.landmarker)
    tracked = [track_video(s, i, model) for i in range(len(s.videos))]
    clips = plan_clips(s, tracked)
    overlay = OverlayWriter(files.overlay, s.size, float(tracked[0]["fps"])) if s.overlay else None
    try:
        crops = write_clips(s, tracked, clips, overlay)
    finally:
        if overlay is not None:
            overlay.close()
    reproj = reprojection_error(s, clips)
    log.info("reprojection error: mean %.4f px, max %.4f px; rigid points move %.2f%% of the face width",
             reproj["mean_px"], reproj["max_px"], 100 * reproj["rigid_point_std_over_face_width"])
    chosen = write_identity_files(s.root, [c.name for c in clips if c.split == "train"],
                                  [c.name for c in clips if c.split == "val"], s.fps, s.candidates)
    meta = _meta(s, tracked, clips, crops, reproj, chosen)
    write_config(s.config_dir, s.identity, s.root, s.fps)
    write_json(files.meta, meta)
    return meta


def _meta(s: Settings, tracked: list[dict], clips: list[Clip], crops: dict, reproj: dict, chosen: list) -> dict:
    import mediapipe

    sources = []
    for i, (v, d) in enumerate(zip(s.videos, tracked)):
        sources.append({"path": str(v), "key": _source_key(v), "fps": float(d["fps"]), "frames": len(d["valid"]),
                        "size": [int(x) for x in d["size"]], "frames_without_face": int((~d["valid"]).sum()),
                        "multi_face_frames": int(d["multi_face_frames"]),
                        "audio": str(s.audios[i] or v), "audio_seconds": len(d["audio"]) / SAMPLE_RATE,
                        "crop": asdict(crops[i]) if i in crops else None})
    return {"status": "done", "identity": s.identity, "model_fps": s.fps, "crop_size": s.size, "sources": sources,
            "clips": [{"name": c.name, "source": c.video, "start": c.start, "end": c.end, "split": c.split,
                       "frames": c.length, "interpolated_frames": c.interpolated} for c in clips],
            "candidates": chosen, "reprojection": reproj,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()
                         if k not in ("videos", "audios")},
            "versions": {"mediapipe": mediapipe.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
                         "project": git_commit()}}
