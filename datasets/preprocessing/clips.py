"""Step 2 of preprocessing: clips. Runs of tracked frames become training clips (split at long face
gaps, the validation tail held out); each clip gets its crops (one stable window per video), 16 kHz
audio, shoulders (GrabCut seed + LK flow) and tracks at the source rate and at the model rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from datasets.identity import IdentityFiles
from datasets.preprocessing import tracks as T
from datasets.preprocessing.crop import CropParams, stable_crop
from datasets.preprocessing.overlay import OverlayWriter
from datasets.preprocessing.shoulders import ShoulderTracker, initial_shoulders, lift_billboard
from util.audio import SAMPLE_RATE
from util.errors import InputError
from util.io import atomic_write, save_npz
from util.video import VideoReader, write_wav

if TYPE_CHECKING:
    from datasets.preprocessing.run import Settings

log = logging.getLogger("lsp")
MIN_VAL_SECONDS = 2.0


@dataclass
class Clip:
    """A run of tracked frames of one video, in one split."""

    name: str
    video: int
    start: int
    end: int  # exclusive, source frame index
    split: str
    interpolated: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start


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
    w, h = (int(v) for v in data["size"])
    return T.filled_geometry(data["landmarks"][sl], data["matrices"][sl], data["valid"][sl], w, h)


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
        todo = [c for c in mine if s.force or not IdentityFiles(s.root).clip(c.name).tracks.is_file()]
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
                IdentityFiles(s.root).clip(clip.name).frames.mkdir(parents=True, exist_ok=True)
        else:
            st["sh"].append(st["tracker"].update(gray))
        if clip in todo:
            cv2.imwrite(str(IdentityFiles(s.root).clip(clip.name).frame(j)), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, s.jpeg_quality])
        if overlay is not None:
            overlay.write(img, face2d, st["sh"][-1], geo.rot[j], geo.trans[j], k_crop)
        if f == clip.end - 1 and clip in todo:
            _finish_clip(s, data, clip, geo, crop, k_crop, np.stack(st["sh"]), fps)


def _finish_clip(s: Settings, data: dict, clip: Clip, geo: T.Geometry, crop: CropParams, k_crop: np.ndarray,
                 shoulders2d: np.ndarray, fps: float) -> None:
    """A clip's audio, source-rate tracks (renderer) and model-rate tracks (audio stages)."""
    files = IdentityFiles(s.root).clip(clip.name)
    audio = data["audio"][round(clip.start / fps * SAMPLE_RATE) : round(clip.end / fps * SAMPLE_RATE)]
    with atomic_write(files.audio) as tmp:
        write_wav(tmp, audio, SAMPLE_RATE)
    shoulders3d = lift_billboard(shoulders2d, geo.trans[:, 2], k_crop)
    pts2d = crop.to_crop(geo.pts2d)
    valid = data["valid"][clip.start : clip.end]
    model = {"pts3d": T.resample(geo.pts3d, fps, s.fps), "rot": T.resample(geo.rot, fps, s.fps, periodic_deg=True),
             "trans": T.resample(geo.trans, fps, s.fps), "pts2d": T.resample(pts2d, fps, s.fps),
             "shoulders2d": T.resample(shoulders2d, fps, s.fps), "shoulders3d": T.resample(shoulders3d, fps, s.fps)}
    save_npz(files.model_tracks(s.fps), compressed=True, fps=np.float64(s.fps), **model)
    save_npz(files.tracks, compressed=True, fps=np.float64(fps), pts2d=pts2d, pts3d=geo.pts3d, rot=geo.rot,
              trans=geo.trans, shoulders2d=shoulders2d, shoulders3d=shoulders3d, valid=valid,
              blendshapes=data["blendshapes"][clip.start : clip.end], intrinsic=k_crop,
              change_paras=np.array([crop.scale, crop.xc, crop.yc]))


