"""The identity-level files of the release layout (LSP §2.1), written from the training clips.

Everything the demo reads is written at the model rate (60 fps): mean_pts3d.npy,
tracked3D_normalized_pts_fix_contour.npy, 3d_fit_data.npz (trans, rot_angles, pts_3d),
shoulder_points3D.npy, normalized_shoulder_points.npy, tracked2D_normalized_pts_fix_contour.npy,
camera_intrinsic.npy, id_scale.mat, change_paras.npz, candidates/normalized_full_{0..3}.jpg; plus
train_list.txt and val_list.txt (datasets/identity.py names them all). APC_feature_base.npy comes
later, from the trained APC encoder (models/apc_model.py write_apc_features).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from scipy.io import savemat

from datasets.identity import IdentityFiles
from datasets.preprocessing.tracks import choose_candidates
from util.errors import InputError
from util.io import atomic_write, load_npz, save_npy, save_npz
from util.landmarks import NUM_CANDIDATES, mouth_opening

log = logging.getLogger("lsp")
ID_SCALE = 1.0  # our pose-free landmarks are already in camera units (MediaPipe centimetres)


def _concat_tracks(files: IdentityFiles, clips: list[str], fps: float | None) -> dict[str, np.ndarray]:
    """The tracks of several clips end to end: model-rate tracks (fps), or source-rate ones (None)."""
    parts = [load_npz(files.clip(c).model_tracks(fps) if fps else files.clip(c).tracks, "clip tracks")
             for c in clips]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if parts[0][k].ndim > 0}


def write_identity_files(root: Path, train: list[str], val: list[str], fps: float,
                         candidates: list[int] | None = None) -> list[dict]:
    """Write the release-layout files from the training clips; returns the chosen candidate frames."""
    if not train:
        raise InputError(f"{root}: no training clip remains after holding out the validation tail")
    files = IdentityFiles(root)
    m = _concat_tracks(files, train, fps)
    save_npy(files.tracked_pts3d, m["pts3d"].astype(np.float32))
    save_npy(files.mean_pts3d, m["pts3d"].mean(0).astype(np.float32))
    save_npy(files.tracked_pts2d, m["pts2d"].astype(np.float32))
    save_npy(files.shoulders3d, m["shoulders3d"].astype(np.float32))
    save_npy(files.shoulders2d, m["shoulders2d"].astype(np.float32))
    save_npz(files.fit_data, trans=m["trans"][:, :, None], rot_angles=m["rot"], pts_3d=m["pts3d"])
    first = load_npz(files.clip(train[0]).tracks, "clip tracks", ("intrinsic", "change_paras"))
    save_npy(files.camera, first["intrinsic"].astype(np.float32))
    scale, xc, yc = first["change_paras"]
    save_npz(files.change_paras, scale=np.float64(scale), xc=np.float64(xc), yc=np.float64(yc))
    with atomic_write(files.id_scale) as tmp:
        savemat(tmp, {"scale": np.array([[ID_SCALE]])})
    files.write_split("train", train)
    files.write_split("val", val)
    return write_candidates(files, train, candidates)


def write_candidates(files: IdentityFiles, train: list[str], chosen: list[int] | None) -> list[dict]:
    """Copy 4 training crops to candidates/: chosen automatically (mouth, yaw, pitch) or by index."""
    src = _concat_tracks(files, train, None)
    frames = [(c, j) for c in train for j in range(len(load_npz(files.clip(c).tracks, "clip tracks")["rot"]))]
    if chosen is None:
        feats = np.stack([mouth_opening(src["pts3d"]), src["rot"][:, 1], src["rot"][:, 0]], 1)
        chosen = choose_candidates(feats, src["valid"].astype(bool), NUM_CANDIDATES)
    elif len(chosen) != NUM_CANDIDATES or not all(0 <= i < len(frames) for i in chosen):
        raise InputError(f"--candidates: expected {NUM_CANDIDATES} frame indices in 0..{len(frames) - 1} "
                         f"(training frames at the source rate), got {chosen}")
    files.candidates.mkdir(exist_ok=True)
    out = []
    for j, i in enumerate(chosen):
        clip, k = frames[i]
        with atomic_write(files.candidate(j)) as tmp:
            shutil.copyfile(files.clip(clip).frame(k), tmp)
        out.append({"index": int(i), "clip": clip, "frame": int(k)})
    return out
