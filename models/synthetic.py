"""Synthetic identities with random weights, for tests and benchmarks (no real data or training needed).

`make_identity` writes a complete data/<id>/ folder in the release layout (a plausible 73-point face,
camera, shoulders, candidates, APC database) and config/<id>.yaml, plus random-weight checkpoints in
our format or, with `release_format=True`, as the authors' raw state dicts with their key prefixes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from scipy.io import savemat

from datasets.identity import STAGES, IdentityFiles
from models.networks import NETWORKS, Audio2HeadposeConfig, Feature2FaceGConfig
from util.audio import SAMPLE_RATE
from util.checkpoint import atomic_save, save_network
from util.landmarks import NUM_CANDIDATES, NUM_POINTS, NUM_SHOULDER_POINTS

FACE_DEPTH = 10.0  # camera-space distance of the synthetic face


def synthetic_face(rng: np.random.Generator) -> np.ndarray:
    """A rough 73-point face in the LSP layout, y up, about 2 units wide: (73, 3)."""
    pts = np.zeros((NUM_POINTS, 3))
    t = np.linspace(-np.pi * 0.45, np.pi * 0.45, 15)
    pts[0:15] = np.stack([np.sin(t), -np.cos(t) * 1.2 + 0.2, np.cos(t) * 0.3 - 0.3], 1)  # jaw/contour
    pts[15:21] = np.stack([np.linspace(-0.8, -0.2, 6), np.full(6, 0.75), np.full(6, 0.3)], 1)  # brows
    pts[21:27] = np.stack([np.linspace(0.2, 0.8, 6), np.full(6, 0.75), np.full(6, 0.3)], 1)
    eye = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    for k, cx in ((27, -0.5), (31, 0.5)):
        pts[k : k + 4] = np.stack([cx + 0.15 * np.cos(eye[::2]), 0.5 + 0.06 * np.sin(eye[::2]), np.full(4, 0.3)], 1)
    pts[65:73] = np.stack([np.r_[-0.5 + 0.15 * np.cos(eye[1::2]), 0.5 + 0.15 * np.cos(eye[1::2])],
                           np.r_[0.5 + 0.06 * np.sin(eye[1::2]), 0.5 + 0.06 * np.sin(eye[1::2])], np.full(8, 0.3)], 1)
    pts[35:46] = np.stack([np.r_[np.zeros(5), np.linspace(-0.2, 0.2, 6)],
                           np.r_[np.linspace(0.5, 0.0, 5), np.full(6, -0.05)],
                           np.r_[np.linspace(0.4, 0.7, 5), np.full(6, 0.45)]], 1)
    lip = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    pts[46:58] = np.stack([-0.4 * np.cos(lip), -0.45 + 0.15 * np.sin(lip), np.full(12, 0.35)], 1)
    inner = np.linspace(np.pi / 4, 3 * np.pi / 4, 3)
    pts[58:61] = np.stack([-0.3 * np.cos(inner[::-1]), -0.47 - 0.02 * np.sin(inner), np.full(3, 0.35)], 1)
    pts[61:64] = np.stack([0.3 * np.cos(inner[::-1]), -0.43 + 0.02 * np.sin(inner), np.full(3, 0.35)], 1)
    pts[64] = [0.0, -0.45, 0.35]
    return pts + rng.normal(0, 0.005, pts.shape)


def write_assets(root: Path, size: int, n_frames: int = 120, apc_frames: int = 600, seed: int = 0) -> None:
    """Write every non-weight file of the release layout into `root` for a `size` x `size` crop."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = IdentityFiles(root)
    face = synthetic_face(rng)
    t = np.arange(n_frames)
    tracked = np.repeat(face[None], n_frames, 0)
    tracked[:, 58:61, 1] -= 0.05 * (1 + np.sin(t / 5))[:, None]  # a mouth that opens and closes
    tracked[:, [27, 28, 29, 30, 31, 32, 33, 34], 1] += 0.02 * (t % 40 < 3)[:, None]  # blinks
    rot = np.stack([180 + 3 * np.sin(t / 17), 5 * np.sin(t / 23), 2 * np.sin(t / 29)], 1)
    trans = np.stack([0.1 * np.sin(t / 31), 0.1 * np.cos(t / 37), FACE_DEPTH + 0.2 * np.sin(t / 41)], 1)
    f = size * FACE_DEPTH / 5.0  # the face spans about 40% of the crop
    intrinsic = np.array([[f, 0, size / 2], [0, f, size / 2 - 0.1 * size], [0, 0, 1]], np.float32)
    np.save(files.mean_pts3d, tracked.mean(0).astype(np.float32))
    np.save(files.tracked_pts3d, tracked.astype(np.float32))
    np.savez(files.fit_data, trans=trans[:, :, None], rot_angles=rot, pts_3d=tracked)
    np.save(files.camera, intrinsic)
    savemat(files.id_scale, {"scale": np.array([[1.0]])})
    xs = np.linspace(0.15, 0.45, 9) * size
    line = np.stack([xs, 0.8 * size + 0.3 * (0.45 * size - xs)], 1)
    both = np.concatenate([line[::-1] * [1, 1], np.stack([size - line[:, 0], line[:, 1]], 1)])  # (18, 2)
    centre = [size / 2, size / 2 - 0.1 * size]
    shoulders = np.concatenate([(both - centre) * FACE_DEPTH / f, np.full((18, 1), FACE_DEPTH)], 1)
    np.save(files.shoulders3d, np.repeat(shoulders[None], n_frames, 0).astype(np.float32))
    np.save(files.shoulders2d, np.repeat(both[None], n_frames, 0).astype(np.float32))
    np.savez(files.change_paras, scale=np.float64(1.0), xc=np.float64(size / 2), yc=np.float64(size / 2))
    np.save(files.apc_base, rng.normal(0, 0.1, (apc_frames, 512)).astype(np.float32))
    files.candidates.mkdir(exist_ok=True)
    for j in range(NUM_CANDIDATES):
        img = np.full((size, size, 3), 90 + 30 * j, np.uint8)
        cv2.circle(img, (size // 2, size // 2 - size // 10), size // 5, (200, 160, 140), -1)
        cv2.imwrite(str(files.candidate(j)), img)
    assert shoulders.shape == (NUM_SHOULDER_POINTS, 3)


def make_identity(project_root: Path, identity: str, size: int = 64, g_size: str = "normal", ngf: int = 8,
                  num_downs: int = 5, release_format: bool = False, n_frames: int = 120, apc_frames: int = 600,
                  seed: int = 0, a2h: Audio2HeadposeConfig | None = None) -> Path:
    """Write data/<identity>/ and config/<identity>.yaml under `project_root` with random weights.

    The audio networks have the release's sizes, except the head-pose WaveNet when `a2h` says otherwise
    (tests that run the original full-window WaveNet as a reference use a narrow one).

    Returns:
        The config folder to pass as `config_dir`.
    """
    torch.manual_seed(seed)
    data = project_root / "data" / identity
    write_assets(data, size, n_frames, apc_frames, seed)
    ckpt = data / "checkpoints"
    gcfg = Feature2FaceGConfig(size=g_size, ngf=ngf, num_downs=num_downs)
    configs = {"Audio2Headpose": a2h or Audio2HeadposeConfig(), "Feature2Face": gcfg}
    nets = {name: net_cls(configs.get(name, config_cls())) for name, (net_cls, config_cls) in NETWORKS.items()}
    if release_format:
        paths = {"APC": project_root / "data" / "APC_epoch_160.model", "Audio2Feature": ckpt / "Audio2Feature.pkl",
                 "Audio2Headpose": ckpt / "Audio2Headpose.pkl", "Feature2Face": ckpt / "Feature2Face.pkl"}
        prefixes = {"APC": "", "Audio2Feature": "module.", "Audio2Headpose": "module.", "Feature2Face": "module.netG."}
        for name, net in nets.items():
            state = {k: v for k, v in net.state_dict().items() if not k.startswith("postnet.")}
            atomic_save({prefixes[name] + k: v for k, v in state.items()}, paths[name])
    else:
        paths = {name: ckpt / f"{name}.pth" for name in nets}
        lookahead = {"Audio2Feature": 18, "Audio2Headpose": 15}
        for name, net in nets.items():
            save_network(paths[name], net, name, net.cfg, {"fps": 60, "frame_future": lookahead.get(name, 0)})
    sections = {s.network: s.section for s in STAGES.values()}
    cfg = {"model_params": {sections[k]: {"ckp_path": f"./{p.relative_to(project_root).as_posix()}"}
                            for k, p in paths.items()}}
    cfg["model_params"]["Image2Image"].update(size=g_size, ngf=ngf, num_downs=num_downs)
    config_dir = project_root / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / f"{identity}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config_dir


def write_training_clips(root: Path, size: int = 64, seconds: tuple[float, ...] = (6.0, 3.0), fps: float = 60.0,
                         src_fps: float = 25.0, seed: int = 0) -> None:
    """Clips in the layout preprocess.py writes (first clip train, the others val), with a learnable link
    between APC features and mouth/pose, so training tests can overfit; needs `write_assets` first."""
    from datasets.preprocessing.tracks import resample
    from util.geometry import project, project_landmarks
    from util.landmarks import feature_map

    rng = np.random.default_rng(seed)
    files = IdentityFiles(root)
    base = np.load(files.mean_pts3d).astype(np.float64)
    k = np.load(files.camera).astype(np.float64)
    sh3d = np.load(files.shoulders3d)[0].astype(np.float64)
    mix = rng.normal(0, 1, (3, 1024))  # APC pair = latent (opening, yaw, noise) x mix + noise
    names = []
    for c, sec in enumerate(seconds):
        n_src = int(sec * src_fps)
        t = np.arange(n_src) / src_fps
        opening = 0.5 + 0.5 * np.sin(2 * np.pi * (1.3 + 0.2 * c) * t + rng.uniform(0, 6))
        yaw = 4 * np.sin(2 * np.pi * 0.3 * t + c)
        pts3d = np.repeat(base[None], n_src, 0)
        pts3d[:, 58:61, 1] -= 0.08 * opening[:, None]
        pts3d[:, 53:58, 1] -= 0.08 * opening[:, None]
        rot = np.stack([180 + 0 * t, yaw, 0 * t], 1)
        trans = np.stack([0.05 * np.sin(t), 0 * t, FACE_DEPTH + 0 * t], 1)
        pts2d = project_landmarks(pts3d, rot, trans, 1.0, k)
        sh2d = np.repeat(project(sh3d, k)[None], n_src, 0)
        clip = files.clip(f"clip_{c:03d}")
        clip.frames.mkdir(parents=True, exist_ok=True)
        for j in range(n_src):
            img = np.full((size, size, 3), 60, np.uint8)
            img[feature_map(pts2d[j], sh2d[j], size) > 0] = (220, 180, 160)
            cv2.imwrite(str(clip.frame(j)), img)
        np.savez(clip.tracks, fps=np.float64(src_fps), pts2d=pts2d, pts3d=pts3d, rot=rot, trans=trans,
                 shoulders2d=sh2d, shoulders3d=np.repeat(sh3d[None], n_src, 0), valid=np.ones(n_src, bool),
                 blendshapes=np.zeros((n_src, 52), np.float32), intrinsic=k,
                 change_paras=np.array([1.0, size / 2, size / 2]))
        model = {key: resample(v, src_fps, fps) for key, v in
                 {"pts3d": pts3d, "trans": trans, "pts2d": pts2d, "shoulders2d": sh2d}.items()}
        model["rot"] = resample(rot, src_fps, fps, periodic_deg=True)
        model["shoulders3d"] = np.repeat(sh3d[None], len(model["rot"]), 0)
        np.savez(clip.model_tracks(fps), fps=np.float64(fps), **model)
        n = len(model["rot"])
        latent = np.stack([resample(opening, src_fps, fps), resample(yaw, src_fps, fps) / 4, rng.normal(0, 1, n)], 1)
        pairs = latent @ mix + rng.normal(0, 0.1, (n, 1024))
        np.save(clip.apc_features, (0.1 * pairs).reshape(2 * n, 512).astype(np.float32))
        import soundfile as sf

        sf.write(clip.audio, rng.normal(0, 0.05, int(sec * SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
        names.append(clip.root.name)
    files.write_split("train", names[:1])
    files.write_split("val", names[1:])
