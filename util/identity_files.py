"""The identity-level files of the release layout (LSP §2.1), the config, and the APC feature database.

Everything the demo reads is written at the model rate (60 fps) from the training clips:
mean_pts3d.npy, tracked3D_normalized_pts_fix_contour.npy, 3d_fit_data.npz (trans, rot_angles,
pts_3d), shoulder_points3D.npy, normalized_shoulder_points.npy, tracked2D_normalized_pts_fix_contour.npy,
camera_intrinsic.npy, id_scale.mat, change_paras.npz, candidates/normalized_full_{0..3}.jpg,
APC_feature_base.npy; plus train_list.txt and val_list.txt.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.io import savemat

from util import tracks as T
from util.errors import InputError
from util.identity import NUM_CANDIDATES, PROJECT_ROOT

log = logging.getLogger("lsp")
ID_SCALE = 1.0  # our pose-free landmarks are already in camera units (MediaPipe centimetres)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def _load_tracks(root: Path, clips: list[str], name: str) -> dict[str, np.ndarray]:
    parts = []
    for c in clips:
        with np.load(root / "clips" / c / name) as d:
            parts.append({k: d[k] for k in d.files})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if parts[0][k].ndim > 0}


def write_identity_files(root: Path, train: list[str], val: list[str], fps: float,
                         candidates: list[int] | None = None) -> list[dict]:
    """Write the release-layout files from the training clips; returns the chosen candidate frames."""
    if not train:
        raise InputError(f"{root}: no training clip remains after holding out the validation tail")
    m = _load_tracks(root, train, f"tracks_{fps:g}fps.npz")
    _save_npy(root / "tracked3D_normalized_pts_fix_contour.npy", m["pts3d"].astype(np.float32))
    _save_npy(root / "mean_pts3d.npy", m["pts3d"].mean(0).astype(np.float32))
    _save_npy(root / "tracked2D_normalized_pts_fix_contour.npy", m["pts2d"].astype(np.float32))
    _save_npy(root / "shoulder_points3D.npy", m["shoulders3d"].astype(np.float32))
    _save_npy(root / "normalized_shoulder_points.npy", m["shoulders2d"].astype(np.float32))
    np.savez(root / "3d_fit_data.npz", trans=m["trans"][:, :, None], rot_angles=m["rot"], pts_3d=m["pts3d"])
    with np.load(root / "clips" / train[0] / "tracks.npz") as first:
        _save_npy(root / "camera_intrinsic.npy", first["intrinsic"].astype(np.float32))
        scale, xc, yc = first["change_paras"]
    np.savez(root / "change_paras.npz", scale=np.float64(scale), xc=np.float64(xc), yc=np.float64(yc))
    savemat(root / "id_scale.mat", {"scale": np.array([[ID_SCALE]])})
    (root / "train_list.txt").write_text("".join(f"{c}\n" for c in train))
    (root / "val_list.txt").write_text("".join(f"{c}\n" for c in val))
    return write_candidates(root, train, candidates)


def write_candidates(root: Path, train: list[str], chosen: list[int] | None) -> list[dict]:
    """Copy 4 training crops to candidates/: chosen automatically (mouth, yaw, pitch) or by index."""
    src = _load_tracks(root, train, "tracks.npz")
    frames = [(c, j) for c in train for j in range(len(np.load(root / "clips" / c / "tracks.npz")["rot"]))]
    if chosen is None:
        feats = np.stack([T.mouth_opening(src["pts3d"]), src["rot"][:, 1], src["rot"][:, 0]], 1)
        chosen = T.choose_candidates(feats, src["valid"].astype(bool), NUM_CANDIDATES)
    elif len(chosen) != NUM_CANDIDATES or not all(0 <= i < len(frames) for i in chosen):
        raise InputError(f"--candidates: expected {NUM_CANDIDATES} frame indices in 0..{len(frames) - 1} "
                         f"(training frames at the source rate), got {chosen}")
    (root / "candidates").mkdir(exist_ok=True)
    out = []
    for j, i in enumerate(chosen):
        clip, k = frames[i]
        shutil.copyfile(root / "clips" / clip / "frames" / f"{k:06d}.jpg",
                        root / "candidates" / f"normalized_full_{j}.jpg")
        out.append({"index": int(i), "clip": clip, "frame": int(k)})
    return out


def project_path(path: Path) -> str:
    """A path as config files write it: ./relative to the project root when inside it."""
    path = Path(path).resolve()
    try:
        return "./" + path.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def write_config(config_dir: Path, identity: str, root: Path, fps: float) -> Path:
    """config/<id>.yaml for a new identity; an existing one is the user's and is left as it is."""
    path = config_dir / f"{identity}.yaml"
    if path.is_file():
        log.info("kept the existing %s", path)
        return path
    data = project_path(root)
    cfg = {
        "fps": fps,
        "model_params": {
            "Audio2Mouth": {"ckp_path": f"./checkpoints/{identity}_audio2feature/latest_net_Audio2Feature.pth"},
            "Headpose": {"ckp_path": f"./checkpoints/{identity}_audio2headpose/latest_net_Audio2Headpose.pth"},
            "Image2Image": {"ckp_path": f"./checkpoints/{identity}_feature2face/latest_net_Feature2Face.pth"},
        },
        "dataset_params": {"root": f"{data}/", "fit_data_path": f"{data}/3d_fit_data.npz",
                           "pts3d_path": f"{data}/tracked3D_normalized_pts_fix_contour.npy"},
    }
    config_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# Identity '{identity}', written by scripts/preprocess.py; edit freely, it is never overwritten.\n"
              "# Keys not given here come from config/default.yaml; train.py updates the ckp_path entries.\n")
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    log.info("wrote %s", path)
    return path


def set_config_value(config_dir: Path, identity: str, keys: tuple[str, ...], value: object) -> None:
    """Set one nested key of config/<id>.yaml, keeping the rest (comments are not kept)."""
    path = config_dir / f"{identity}.yaml"
    cfg = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if node.get(keys[-1]) == value:
        return
    node[keys[-1]] = value
    lines = path.read_text().splitlines() if path.is_file() else []
    header = "".join(line + "\n" for line in lines if line.startswith("#"))
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    log.info("%s: %s = %s", path, ".".join(keys), value)


@torch.no_grad()
def write_apc_features(root: Path, apc_ckpt: Path | None, config_dir: Path, identity: str, meta: dict) -> None:
    """APC features of every clip (clips/<clip>/apc_features.npy, 2 per model frame) and the database of
    the training clips (APC_feature_base.npy); config APC.ckp_path is pointed at the same checkpoint."""
    from tqdm import tqdm

    from models.networks import APC, APCConfig
    from util.audio import LogMel, MelConfig, load_audio
    from util.checkpoint import load_network

    if apc_ckpt is None:
        raise InputError("--only apc_features needs --apc_ckpt (train one with: python train.py --model apc ...)")
    net, cfg, _ = load_network(apc_ckpt, "APC", APC, APCConfig, APCConfig(), "--apc_ckpt",
                               optional_prefixes=("postnet.",))
    mel = LogMel(MelConfig(fps=float(meta["model_fps"]), n_mels=cfg.mel_dim))
    base = []
    for clip in tqdm(meta["clips"], desc="APC features", unit="clip"):
        audio = load_audio(root / "clips" / clip["name"] / "audio.wav")
        feats, _ = net(torch.from_numpy(mel(audio))[None])
        feats = feats[0].numpy().astype(np.float32)
        _save_npy(root / "clips" / clip["name"] / "apc_features.npy", feats)
        if clip["split"] == "train":
            base.append(feats)
    _save_npy(root / "APC_feature_base.npy", np.concatenate(base))
    set_config_value(config_dir, identity, ("model_params", "APC", "ckp_path"), project_path(apc_ckpt))
    meta["apc_checkpoint"] = project_path(apc_ckpt)
    import json

    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
