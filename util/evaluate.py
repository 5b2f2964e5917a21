"""Evaluation of a trained identity on its held-out tail (and on other speech), as numbers and a report.

* renderer fidelity: tracked landmarks and shoulders -> Feature2Face, PSNR / SSIM against the real crops;
* audio to mouth: predicted pose-free mouth vs the tracked one, M-LMD (pixels of a 512 crop) and the
  correlation of mouth opening over time;
* end to end: the rendered video is tracked with the same face tracker and its mouth compared with
  the real tracks, so lip sync is measured on pixels, not only on our own landmarks;
* head pose: statistics of sampled poses against the real ones;
* speed: frames/s of each inference stage in this run.
Metrics that need weights we cannot obtain here are listed as skipped: FID always, SyncNet LSE-C/D and
LPIPS unless their weight files are given.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from models.pipeline import PortraitPipeline
from util import metrics as M
from util.audio import load_audio
from util.errors import InputError
from util.face_tracker import FaceTracker, ensure_landmarker
from util.tracks import fill_gaps, lsp_geometry, resample
from util.video import VideoReader

log = logging.getLogger("lsp")
SKIPPED = {
    "LSE-C / LSE-D (SyncNet)": "needs the SyncNet weights, which cannot be downloaded here (give them with "
                               "quickstart.py --syncnet_ckpt syncnet_v2.model)",
    "LPIPS": "needs ImageNet AlexNet and LPIPS weights, which cannot be downloaded here (give them with "
             "quickstart.py --lpips_alexnet alexnet-owt-7be5be79.pth --lpips_lin alex.pth)",
    "FID": "needs InceptionV3 ImageNet weights, which cannot be downloaded here",
}


def face_width(pts: np.ndarray) -> np.ndarray:
    """Contour width (point 0 to 14) per frame of (N, 73, D) landmarks."""
    return np.linalg.norm(pts[:, 14] - pts[:, 0], axis=-1)


def renderer_fidelity(pipe: PortraitPipeline, clip: Path, tracks: dict, batch: int = 4,
                      lpips=None) -> tuple[dict, list]:  # noqa: ANN001 - a util.lpips.LPIPS
    """PSNR / SSIM (and LPIPS when given) of frames rendered from the tracked landmarks against the real crops."""
    idx = np.flatnonzero(tracks["valid"])
    scores, samples, times = [], [], []
    for start in range(0, len(idx), batch):
        sel = idx[start : start + batch]
        maps = pipe.renderer.feature_maps(tracks["pts2d"][sel], tracks["shoulders2d"][sel])
        t = time.perf_counter()
        fakes = pipe.renderer(maps)
        times.append((time.perf_counter() - t) / len(sel))
        for j, fake, fmap in zip(sel, fakes, maps):
            real = cv2.cvtColor(cv2.imread(str(clip / "frames" / f"{j:06d}.jpg")), cv2.COLOR_BGR2RGB)
            scores.append((M.psnr(fake, real), M.ssim(fake, real),
                           lpips.distance(fake, real) if lpips is not None else np.nan))
            if len(samples) < 4 and j % max(1, len(idx) // 4) == 0:
                samples.append(np.concatenate([real, fake, np.repeat(fmap[..., None], 3, 2)], 1))
    s = np.array(scores)
    out = {"psnr_db": float(s[:, 0].mean()), "ssim": float(s[:, 1].mean()), "frames": len(s),
           "render_ms_per_frame": 1000 * float(np.median(times))}
    if lpips is not None:
        out["lpips_alex"] = float(s[:, 2].mean())
    return out, samples


def lip_sync_scores(ckpt: Path, clip: Path, src: dict, audio: np.ndarray, rendered: Path, other: np.ndarray,
                    driving: dict[str, Path], out_dir: Path, device: torch.device) -> dict:
    """LSE-D / LSE-C of the real held-out frames, our held-out video and our other-speaker video."""
    from util.syncnet import SyncNet, score_frames, score_video

    net = SyncNet.from_file(ckpt).to(device)
    real = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in sorted((clip / "frames").glob("*.jpg"))]
    stem = driving["other_speaker"].stem
    return {"real_heldout": score_frames(net, real, float(src["fps"]), audio),
            "ours_heldout": score_video(net, rendered, audio),
            "ours_other_speaker": score_video(net, out_dir / stem / f"{stem}.mp4", other)}


def track_video(path: Path) -> tuple[np.ndarray, float]:
    """Pose-free landmarks (N, 73, 3) of a rendered video, tracked with the preprocessing tracker."""
    reader = VideoReader(path)
    lms, mats, valid = [], [], []
    with FaceTracker(ensure_landmarker(), reader.fps) as tracker:
        for rgb in reader:
            obs = tracker.track(rgb)
            valid.append(obs is not None)
            lms.append(obs.landmarks if obs else np.zeros((478, 3), np.float32))
            mats.append(obs.matrix if obs else np.eye(4))
    valid = np.array(valid)
    if not valid.any():
        return np.zeros((0, 73, 3)), reader.fps
    geo = lsp_geometry(np.stack(lms), np.stack(mats), reader.width, reader.height)
    return fill_gaps(geo.pts3d, valid), reader.fps


def mouth_scores(pred: np.ndarray, real: np.ndarray, px_per_unit: float) -> dict:
    """M-LMD and opening correlation of two pose-free sequences; each is scaled to the real face width."""
    n = min(len(pred), len(real))
    pred = pred[:n] * (face_width(real).mean() / face_width(pred[:n]).mean())
    pred = pred - pred[:, M.MOUTH].mean((0, 1)) + real[:n, M.MOUTH].mean((0, 1))  # same mouth position
    return {"m_lmd_px": M.mouth_lmd(pred, real[:n], px_per_unit),
            "opening_correlation": M.correlation(M.mouth_opening(pred), M.mouth_opening(real[:n])), "frames": n}


def audio_envelope(audio: np.ndarray, fps: float, n: int, sample_rate: int = 16000) -> np.ndarray:
    """RMS loudness per video frame (n,)."""
    hop = sample_rate / fps
    return np.array([np.sqrt(np.mean(audio[int(i * hop) : int((i + 1) * hop)] ** 2) + 1e-12) for i in range(n)])


def evaluate_identity(identity: str, config_dir: Path, out_dir: Path, driving: dict[str, Path], device: str,
                      timings: dict, speech_dir: Path | None = None,
                      lpips_files: tuple[Path, Path] | None = None, syncnet_ckpt: Path | None = None) -> Path:
    """Evaluate data/<identity> with its trained networks; writes metrics.json and report.html in out_dir.

    `lpips_files` (AlexNet, LPIPS heads) adds LPIPS to the renderer's scores (util/lpips.py);
    `syncnet_ckpt` adds LSE-D / LSE-C of the real and the rendered videos (util/syncnet.py)."""
    from util.report import write_report

    pipe = PortraitPipeline.from_identity(identity, device, config_dir)
    root = pipe.assets.root
    meta = json.loads((root / "meta.json").read_text())
    val = next(c["name"] for c in meta["clips"] if c["split"] == "val")
    clip = root / "clips" / val
    with np.load(clip / "tracks.npz") as d:
        src = {k: d[k] for k in d.files}
    with np.load(clip / f"tracks_{pipe.fps:g}fps.npz") as d:
        real = {k: d[k] for k in d.files}
    px_per_unit = float((face_width(real["pts2d"]) / face_width(real["pts3d"])).mean()) \
        * M.CROP_REFERENCE / pipe.assets.image_size[0]
    results: dict = {"identity": identity, "heldout_clip": val, "heldout_seconds": len(src["rot"]) / float(src["fps"])}
    lpips = None
    if lpips_files is not None:
        from util.lpips import LPIPS

        lpips = LPIPS.from_files(*lpips_files).to(pipe.renderer.device)
    fidelity, samples = renderer_fidelity(pipe, clip, src, lpips=lpips)
    results["renderer"] = fidelity
    audio = load_audio(clip / "audio.wav")
    speed = {}
    t = time.perf_counter()
    pred = pipe.predict(audio, seed=0)
    speed["audio_side_fps"] = pred.n_frames / (time.perf_counter() - t)
    speed["render_fps"] = 1000 / fidelity["render_ms_per_frame"]
    results["audio_to_mouth"] = mouth_scores(pred.face3d, real["pts3d"], px_per_unit)
    rendered = out_dir / driving["heldout"].stem / f"{driving['heldout'].stem}.mp4"
    tracked, _ = track_video(rendered)
    results["end_to_end"] = mouth_scores(tracked, real["pts3d"], px_per_unit) if len(tracked) else {}
    results["head_pose"] = {"sampled": M.pose_statistics(pred.rotation, pred.translation, pipe.fps),
                            "real": M.pose_statistics(real["rot"], real["trans"], pipe.fps)}
    env = audio_envelope(audio, pipe.fps, pred.n_frames)
    results["mouth_vs_loudness"] = {"predicted": M.correlation(M.mouth_opening(pred.face3d), env),
                                    "real": M.correlation(M.mouth_opening(real["pts3d"]), env)}
    other = load_audio(driving["other_speaker"])
    pred_other = pipe.predict(other, seed=0)
    results["other_speaker"] = {
        "audio": str(driving["other_speaker"]), "seconds": len(other) / 16000,
        "head_pose": M.pose_statistics(pred_other.rotation, pred_other.translation, pipe.fps),
        "mouth_vs_loudness": M.correlation(M.mouth_opening(pred_other.face3d),
                                           audio_envelope(other, pipe.fps, pred_other.n_frames))}
    results["speed"] = {**speed, **{k: round(v, 1) for k, v in timings.items()}}
    if syncnet_ckpt is not None:
        results["lip_sync"] = lip_sync_scores(syncnet_ckpt, clip, src, audio, rendered, other, driving, out_dir,
                                              pipe.renderer.device)
    done = {"LPIPS": lpips is not None, "LSE-C / LSE-D (SyncNet)": syncnet_ckpt is not None}
    results["skipped_metrics"] = {k: v for k, v in SKIPPED.items() if not done.get(k)}
    results["training"] = _training_summary(pipe.cfg, speech_dir)
    series = {"real": M.mouth_opening(real["pts3d"]), "predicted": M.mouth_opening(pred.face3d),
              "rendered, tracked": M.mouth_opening(tracked) if len(tracked) else None}
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return write_report(out_dir, results, samples, series, pred, real, src, clip, rendered, driving, pipe.fps)


def _training_summary(cfg: dict, speech_dir: Path | None) -> dict:
    """Iterations and sizes of the networks the config points at; how much speech APC saw."""
    from util.identity import resolve

    out = {}
    for section in ("APC", "Audio2Mouth", "Headpose", "Image2Image"):
        path = resolve(cfg, cfg["model_params"][section]["ckp_path"])
        state = path.with_name(path.name.split("_net_")[0] + "_state.pth")
        info = {"checkpoint": str(path)}
        if state.is_file():
            info["iterations"] = int(torch.load(state, map_location="cpu", weights_only=False)["total_iters"])
        out[section] = info
    if speech_dir is not None and Path(speech_dir).is_dir():
        import soundfile as sf

        files = [f for f in Path(speech_dir).rglob("*") if f.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3")]
        out["apc_speech"] = {"files": len(files), "minutes": sum(sf.info(str(f)).duration for f in files) / 60}
    return out


def resample_to(values: np.ndarray, n: int) -> np.ndarray:
    """Stretch a series to n samples (for plots of series at different rates)."""
    return resample(values, len(values), n) if len(values) else values


def add_metric_weight_flags(p) -> None:  # noqa: ANN001 - an argparse.ArgumentParser
    """--lpips_alexnet / --lpips_lin / --syncnet_ckpt: the optional metrics' weight files."""
    p.add_argument("--lpips_alexnet", type=Path, default=None,
                   help="torchvision's ImageNet AlexNet (alexnet-owt-7be5be79.pth): with --lpips_lin, adds LPIPS")
    p.add_argument("--lpips_lin", type=Path, default=None, help="the LPIPS AlexNet heads (alex.pth of LPIPS v0.1)")
    p.add_argument("--syncnet_ckpt", type=Path, default=None,
                   help="SyncNet weights (syncnet_v2.model of syncnet_python): adds LSE-D / LSE-C to the report")


def check_metric_weight_flags(p, args) -> None:  # noqa: ANN001
    if (args.lpips_alexnet is None) != (args.lpips_lin is None):
        p.error("--lpips_alexnet and --lpips_lin go together")


def demo_and_evaluate(identity: str, data_root: Path, config_dir: Path, results_dir: Path, other_audio: Path,
                      device: str, timings: dict, args, speech_dir: Path | None = None) -> Path:  # noqa: ANN001
    """Drive the identity with its held-out tail's speech and with `other_audio` (demo.py), then evaluate;
    returns the report. `args` carries the metric weight flags."""
    import demo

    out = results_dir / identity
    out.mkdir(parents=True, exist_ok=True)
    if not (data_root / identity).is_dir():
        raise InputError(f"identity folder not found: {data_root / identity} (make it with scripts/preprocess.py)")
    val_list = data_root / identity / "val_list.txt"
    if not val_list.is_file() or not val_list.read_text().split():
        raise InputError(f"{val_list}: no held-out clip to evaluate on (made by scripts/preprocess.py)")
    val_clip = val_list.read_text().split()[0]
    tail = out / "heldout_tail.wav"  # the held-out tail's own speech, under a name the results can carry
    tail.write_bytes((data_root / identity / "clips" / val_clip / "audio.wav").read_bytes())
    driving = {"heldout": tail, "other_speaker": other_audio}
    for label, audio in driving.items():
        t = time.perf_counter()
        print(f"\n== demo: {label} audio", flush=True)
        code = demo.cli(["--id", identity, "--driving_audio", str(audio), "--device", device, "--config_dir",
                         str(config_dir), "--results_dir", str(results_dir), "--overwrite", "--batch_size", "4"])
        if code != 0:
            raise InputError(f"demo.py failed on {audio} (exit {code}); see the message above")
        timings[f"demo_{label}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    print("\n== evaluate", flush=True)
    lpips = (args.lpips_alexnet, args.lpips_lin) if args.lpips_alexnet is not None else None
    report = evaluate_identity(identity, config_dir, out, driving, device, timings, speech_dir, lpips,
                               args.syncnet_ckpt)
    timings["evaluate_s"] = time.perf_counter() - t
    return report
