"""Build an identity from talking-head videos: track, crop, shoulders, clips, the release layout, config.

Steps, each resumable (its output is written last, atomically, and reused by a later run):
  1. track   every frame of each video with MediaPipe (work/<video>.track.npz), extract 16 kHz audio
  2. clips   split at long face gaps, hold out the tail for validation, crop with one stable window
             per video, follow the shoulders, write clips/<clip>/{frames/*.jpg, audio.wav, tracks*.npz}
  3. identity the release's files (mean_pts3d.npy, 3d_fit_data.npz, ...), candidates, lists, config
  4. apc     APC features per clip and APC_feature_base.npy, when an APC checkpoint is given
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from util import tracks as T
from util.audio import SAMPLE_RATE, load_audio
from util.crop import CropParams, stable_crop
from util.errors import InputError, require_file
from util.face_tracker import FaceTracker, ensure_landmarker
from util.geometry import project_landmarks
from util.identity import CONFIG_DIR, PROJECT_ROOT
from util.identity_files import write_config, write_identity_files
from util.overlay import OverlayWriter
from util.shoulders import ShoulderTracker, initial_shoulders, lift_billboard
from util.video import VideoReader

log = logging.getLogger("lsp")
MIN_VAL_SECONDS = 2.0


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
    apc_ckpt: Path | None = None
    force: bool = False
    only: str | None = None
    data_root: Path = PROJECT_ROOT / "data"
    config_dir: Path = CONFIG_DIR
    overlay: bool = True
    jpeg_quality: int = 95

    @property
    def root(self) -> Path:
        return self.data_root / self.identity


@dataclass
class Clip:
    """A run of tracked frames of one video, in one split."""

    name: str
    video: int
    start: int
    end: int  # exclusive, source frame index
    split: str
    interpolated: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.end - self.start


def _source_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:10]


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def check_target(s: Settings) -> dict | None:
    """The existing meta.json when resuming the same sources; refuse a foreign or different identity."""
    meta_path = s.root / "meta.json"
    if not s.root.exists() or s.force:
        return None
    if not meta_path.is_file():
        raise InputError(f"--id {s.identity}: {s.root} already exists and was not made by preprocess.py; "
                         "choose another --id, or pass --force to write into it")
    meta = json.loads(meta_path.read_text())
    same = [v["key"] for v in meta.get("sources", [])] == [_source_key(v) for v in s.videos]
    if s.only is None and not same:
        raise InputError(f"--id {s.identity}: {s.root} holds an identity made from other videos "
                         f"({', '.join(v['path'] for v in meta.get('sources', []))}); pass --force to redo it")
    return meta


def track_video(s: Settings, i: int, model: Path) -> dict:
    """Step 1 for video i: MediaPipe on every frame, and its audio at 16 kHz; cached in work/."""
    video = s.videos[i]
    out = s.root / "work" / f"{video.stem}_{_source_key(video)}.track.npz"
    if out.is_file() and not s.force:
        with np.load(out) as data:
            return {k: data[k] for k in data.files}
    reader = VideoReader(video)
    audio = load_audio(s.audios[i], SAMPLE_RATE, what="--audio") if s.audios[i] else _video_audio(video)
    n_est = max(reader.num_frames, 1)
    lms, mats, shapes, valid = [], [], [], []
    with FaceTracker(model, reader.fps) as tracker:
        for rgb in tqdm(reader, total=n_est, desc=f"track {video.name}", unit="frame"):
            obs = tracker.track(rgb)
            valid.append(obs is not None)
            lms.append(obs.landmarks if obs else np.full((478, 3), np.nan, np.float32))
            mats.append(obs.matrix if obs else np.full((4, 4), np.nan))
            shapes.append(obs.blendshapes if obs else np.zeros(52, np.float32))
        multi = tracker.faces_seen
    data = {"landmarks": np.stack(lms), "matrices": np.stack(mats), "blendshapes": np.stack(shapes),
            "valid": np.array(valid), "fps": np.float64(reader.fps), "size": np.array([reader.width, reader.height]),
            "audio": audio, "multi_face_frames": np.int64(multi)}
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_npz(out, **data)
    return data


def _video_audio(video: Path) -> np.ndarray:
    from util.audio import _decode_with_ffmpeg
    from util.video import probe

    if probe(video)["audio"] is None:
        raise InputError(f"video {video} has no audio stream; give the speech with --audio FILE")
    return _decode_with_ffmpeg(video, SAMPLE_RATE)


def plan_clips(s: Settings, tracked: list[dict]) -> list[Clip]:
    """Segments with a face, limited to the audio, with the validation tail split off the last one."""
    clips = []
    for i, data in enumerate(tracked):
        fps = float(data["fps"])
        n = min(len(data["valid"]), int(len(data["audio"]) / SAMPLE_RATE * fps))
        segments, dropped = T.find_segments(data["valid"][:n], round(s.max_gap * fps), round(s.min_clip * fps))
        gaps = int((~data["valid"][:n]).sum())
        log.info("%s: %d frames, %d without the face, %d in runs shorter than %.1f s dropped, %d segment(s)",
                 s.videos[i].name, n, gaps, dropped, s.min_clip, len(segments))
        for a, b in segments:
            interp = int((~data["valid"][a:b]).sum())
            clips.append(Clip(f"clip_{len(clips):03d}", i, a, b, "train", interp))
    total = sum(c.length / float(tracked[c.video]["fps"]) for c in clips)
    if total < s.min_total:
        raise InputError(f"{', '.join(str(v) for v in s.videos)}: only {total:.1f} s of video with a tracked face; "
                         f"training needs at least {s.min_total:g} s (3-5 minutes gives good results)")
    last = clips[-1]
    fps = float(tracked[last.video]["fps"])
    val_frames = round(max(s.val_fraction * total, MIN_VAL_SECONDS) * fps)
    if s.val_fraction > 0:
        if last.length - val_frames >= s.min_clip * fps:
            clips.append(Clip(f"clip_{len(clips):03d}", last.video, last.end - val_frames, last.end, "val"))
            last.end -= val_frames
            last.interpolated = int((~tracked[last.video]["valid"][last.start : last.end]).sum())
        elif len(clips) > 1:
            last.split = "val"
    return clips


def _clip_geometry(data: dict, clip: Clip) -> T.Geometry:
    """LSP tracks of a clip's frames, with gaps filled by interpolation."""
    sl = slice(clip.start, clip.end)
    valid = data["valid"][sl]
    lms, mats = data["landmarks"][sl].copy(), data["matrices"][sl].copy()
    good = np.flatnonzero(valid)
    lms[~valid], mats[~valid] = lms[good[0]], mats[good[0]]  # placeholders, replaced below
    w, h = (int(v) for v in data["size"])
    geo = T.lsp_geometry(lms, mats, w, h)
    rot = np.rad2deg(np.unwrap(np.deg2rad(geo.rot), axis=0))
    return T.Geometry(T.fill_gaps(geo.pts2d, valid), T.fill_gaps(geo.pts3d, valid),
                      T.wrap_rot_x(T.fill_gaps(rot, valid)), T.fill_gaps(geo.trans, valid))


def write_clips(s: Settings, tracked: list[dict], clips: list[Clip], overlay: OverlayWriter | None) -> dict:
    """Step 2: per video, decode once more and write every clip's crops, audio, tracks and shoulders."""
    crops = {}
    for i, data in enumerate(tracked):
        mine = [c for c in clips if c.video == i]
        if not mine:
            continue
        geos = {c.name: _clip_geometry(data, c) for c in mine}
        w, h = (int(v) for v in data["size"])
        crop = stable_crop(np.concatenate([g.pts2d for g in geos.values()]), w, h, s.size)
        crops[i] = crop
        todo = [c for c in mine if s.force or not (s.root / "clips" / c.name / "tracks.npz").is_file()]
        if todo or overlay is not None:
            _write_video_clips(s, i, data, mine, todo, geos, crop, overlay)
    return crops


def _write_video_clips(s: Settings, i: int, data: dict, mine: list[Clip], todo: list[Clip],
                       geos: dict[str, T.Geometry], crop: CropParams, overlay: OverlayWriter | None) -> None:
    fps = float(data["fps"])
    k_crop = crop.intrinsic(T.source_intrinsic(*(int(v) for v in data["size"])))
    by_frame = {f: c for c in mine for f in range(c.start, c.end)}
    state: dict[str, dict] = {}
    reader = VideoReader(s.videos[i])
    last = max(c.end for c in mine)
    for f, rgb in enumerate(tqdm(reader, total=last, desc=f"crop {s.videos[i].name}", unit="frame")):
        if f >= last:
            reader.close()
            break
        clip = by_frame.get(f)
        if clip is None:
            continue
        geo, j = geos[clip.name], f - clip.start
        img = crop.apply(rgb)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        face2d = crop.to_crop(geo.pts2d[j])
        st = state.get(clip.name)
        if st is None:
            st = state[clip.name] = {"tracker": ShoulderTracker(gray, initial_shoulders(img, face2d)), "sh": []}
            st["sh"].append(st["tracker"].points.copy())
            if clip in todo:
                (s.root / "clips" / clip.name / "frames").mkdir(parents=True, exist_ok=True)
        else:
            st["sh"].append(st["tracker"].update(gray))
        if clip in todo:
            cv2.imwrite(str(s.root / "clips" / clip.name / "frames" / f"{j:06d}.jpg"),
                        cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, s.jpeg_quality])
        if overlay is not None:
            overlay.write(img, face2d, st["sh"][-1], geo.rot[j], geo.trans[j], k_crop)
        if f == clip.end - 1 and clip in todo:
            _finish_clip(s, data, clip, geo, crop, k_crop, np.stack(st["sh"]), fps)


def _finish_clip(s: Settings, data: dict, clip: Clip, geo: T.Geometry, crop: CropParams, k_crop: np.ndarray,
                 shoulders2d: np.ndarray, fps: float) -> None:
    """A clip's audio, source-rate tracks (renderer) and model-rate tracks (audio stages)."""
    folder = s.root / "clips" / clip.name
    audio = data["audio"][round(clip.start / fps * SAMPLE_RATE) : round(clip.end / fps * SAMPLE_RATE)]
    import soundfile as sf

    sf.write(folder / "audio.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    shoulders3d = lift_billboard(shoulders2d, geo.trans[:, 2], k_crop)
    pts2d = crop.to_crop(geo.pts2d)
    valid = data["valid"][clip.start : clip.end]
    model = {"pts3d": T.resample(geo.pts3d, fps, s.fps), "rot": T.resample(geo.rot, fps, s.fps, periodic_deg=True),
             "trans": T.resample(geo.trans, fps, s.fps), "pts2d": T.resample(pts2d, fps, s.fps),
             "shoulders2d": T.resample(shoulders2d, fps, s.fps), "shoulders3d": T.resample(shoulders3d, fps, s.fps)}
    _save_npz(folder / f"tracks_{s.fps:g}fps.npz", fps=np.float64(s.fps), **model)
    _save_npz(folder / "tracks.npz", fps=np.float64(fps), pts2d=pts2d, pts3d=geo.pts3d, rot=geo.rot,
              trans=geo.trans, shoulders2d=shoulders2d, shoulders3d=shoulders3d, valid=valid,
              blendshapes=data["blendshapes"][clip.start : clip.end], intrinsic=k_crop,
              change_paras=np.array([crop.scale, crop.xc, crop.yc]))


RIGID_POINTS = [27, 29, 31, 33, 35, 36, 37]  # eye corners and nose bridge: move only with the head


def reprojection_error(s: Settings, clips: list[Clip]) -> dict:
    """Pixels between the stored pose-free 3D landmarks projected with the stored pose and camera, and
    the tracked 2D points, over all clips at the source rate; and how still the rigid points of the
    pose-free landmarks stay (their std over time, relative to the face width), which measures how well
    the head pose explains the motion."""
    errs, rigid = [], []
    for c in clips:
        with np.load(s.root / "clips" / c.name / "tracks.npz") as d:
            uv = project_landmarks(d["pts3d"], d["rot"], d["trans"], 1.0, d["intrinsic"])
            errs.append(np.linalg.norm(uv - d["pts2d"], axis=-1).ravel())
            width = np.linalg.norm(d["pts3d"][:, 14] - d["pts3d"][:, 0], axis=-1).mean()
            rigid.append(d["pts3d"][:, RIGID_POINTS].std(0).mean() / width)
    e = np.concatenate(errs)
    return {"mean_px": float(e.mean()), "max_px": float(e.max()), "p99_px": float(np.percentile(e, 99)),
            "rigid_point_std_over_face_width": float(np.mean(rigid))}


def run(s: Settings) -> dict:
    """Run every step (or `s.only`); returns the meta dict written to data/<id>/meta.json."""
    for v, a in zip(s.videos, s.audios):
        require_file(v, "video")
        if a is not None:
            require_file(a, "--audio file")
    meta = check_target(s)
    if s.only == "apc_features":
        if meta is None or meta.get("status") != "done":
            raise InputError(f"--only apc_features: {s.root} has no finished preprocessing to add features to")
        from util.identity_files import write_apc_features

        write_apc_features(s.root, s.apc_ckpt, s.config_dir, s.identity, meta)
        return meta
    s.root.mkdir(parents=True, exist_ok=True)
    if meta is None:  # claim the folder at once, so an interrupted run can be resumed
        started = {"status": "in progress", "sources": [{"path": str(v), "key": _source_key(v)} for v in s.videos]}
        (s.root / "meta.json").write_text(json.dumps(started, indent=2) + "\n")
    model = ensure_landmarker(s.landmarker)
    tracked = [track_video(s, i, model) for i in range(len(s.videos))]
    clips = plan_clips(s, tracked)
    overlay = OverlayWriter(s.root / "overlay.mp4", s.size, float(tracked[0]["fps"])) if s.overlay else None
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
    (s.root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if s.apc_ckpt is not None:
        from util.identity_files import write_apc_features

        write_apc_features(s.root, s.apc_ckpt, s.config_dir, s.identity, meta)
    return meta


def _meta(s: Settings, tracked: list[dict], clips: list[Clip], crops: dict, reproj: dict, chosen: list) -> dict:
    import mediapipe
    import torch

    from models.base_model import git_commit

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
                         "torch": torch.__version__, "project": git_commit()}}
