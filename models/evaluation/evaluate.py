"""Evaluation of a trained identity on its held-out tail (and on other speech), as numbers and a report.

* renderer fidelity: tracked landmarks and shoulders -> Feature2Face, PSNR / SSIM against the real crops;
* audio to mouth: predicted pose-free mouth vs the tracked one, M-LMD (pixels of a 512 crop) and the
  correlation of mouth opening over time;
* end to end: the rendered video is tracked with the same face tracker and its mouth compared with
  the real tracks, so lip sync is measured on pixels, not only on our own landmarks;
* lip sync without weights (lipsync.py): audio-visual offset and confidence, mouth opening in
  silence, mouth-crop PSNR and sharpness, real vs ours;
* head pose: statistics of sampled poses against the real ones;
* speed: frames/s of each inference stage in this run.
Metrics that need weights we cannot obtain here are listed as skipped: FID always, SyncNet LSE-C/D and
LPIPS unless their weight files are given.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from datasets.identity import STAGES, ClipFiles, IdentityFiles, stage_checkpoints
from datasets.preprocessing.tracker import track_frames
from datasets.preprocessing.tracks import Geometry, filled_geometry, resample
from models.evaluation import lipsync
from models.evaluation import metrics as M
from models.runtime import PortraitPipeline
from models.runtime.pipeline import Prediction
from util.audio import SAMPLE_RATE, load_audio
from util.checkpoint import load_file, split_network_path, state_path
from util.errors import InputError
from util.io import atomic_write, load_npz, prepare_output_dir, write_json
from util.landmarks import face_width, mouth_opening
from util.video import VideoReader, probe

log = logging.getLogger("lsp")
EVAL_BATCH = 4  # frames per renderer call in the evaluation's demos
POSE_DRAWS = 4  # head-motion draws (seeds 0..3) whose statistics are averaged, with their range: how much of a
# spread is the draw and how much the model (on the example: pitch std 2.90-2.94 over 16 draws of the 6-s tail)
SKIPPED = {
    "LSE-C / LSE-D (SyncNet)": "needs the SyncNet weights, which cannot be downloaded here (give them with "
                               "quickstart.py --syncnet_ckpt syncnet_v2.model)",
    "LPIPS": "needs ImageNet AlexNet and LPIPS weights, which cannot be downloaded here (give them with "
             "quickstart.py --lpips_alexnet alexnet-owt-7be5be79.pth --lpips_lin alex.pth)",
    "FID": "needs InceptionV3 ImageNet weights, which cannot be downloaded here",
}


def renderer_fidelity(pipe: PortraitPipeline, clip: ClipFiles, tracks: dict, batch: int = 4,
                      lpips=None) -> tuple[dict, list]:  # noqa: ANN001 - an evaluation.lpips.LPIPS
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
            real = cv2.cvtColor(cv2.imread(str(clip.frame(j))), cv2.COLOR_BGR2RGB)
            scores.append((M.psnr(fake, real), M.ssim(fake, real),
                           lpips.distance(fake, real) if lpips is not None else np.nan,
                           *lipsync.mouth_crop_scores(fake, real, tracks["pts2d"][j])))
            if len(samples) < 4 and j % max(1, len(idx) // 4) == 0:
                samples.append(np.concatenate([real, fake, np.repeat(fmap[..., None], 3, 2)], 1))
    s = np.array(scores)
    out = {"psnr_db": float(s[:, 0].mean()), "ssim": float(s[:, 1].mean()), "frames": len(s),
           "render_ms_per_frame": 1000 * float(np.median(times))}
    if lpips is not None:
        out["lpips_alex"] = float(s[:, 2].mean())
    out.update(lipsync.summarize_mouth_scores(s[:, 3:6]))
    return out, samples


def lip_sync_scores(ckpt: Path, clip: ClipFiles, src: dict, audio: np.ndarray, rendered: Path, other: np.ndarray,
                    driving: dict[str, Path], out_dir: Path, device: torch.device) -> dict:
    """LSE-D / LSE-C of the real held-out frames, our held-out video and our other-speaker video."""
    from models.evaluation.syncnet import SyncNet, score_frames, score_video

    net = SyncNet.from_file(ckpt).to(device)
    real = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in sorted(clip.frames.glob("*.jpg"))]
    stem = driving["other_speaker"].stem
    return {"real_heldout": score_frames(net, real, float(src["fps"]), audio),
            "ours_heldout": score_video(net, rendered, audio),
            "ours_other_speaker": score_video(net, out_dir / stem / f"{stem}.mp4", other)}


def track_video(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """Pose-free landmarks (N, 73, 3) of a video, tracked with the preprocessing tracker."""
    geo, fps = track_geometry(path, max_seconds)
    return (geo.pts3d if geo is not None else np.zeros((0, 73, 3))), fps


def track_geometry(path: Path, max_seconds: float | None = None) -> tuple[Geometry | None, float]:
    """LSP tracks of a video (its first `max_seconds` when given), gaps filled; None when no face is found."""
    reader = VideoReader(path)
    limit = reader.num_frames if max_seconds is None else min(reader.num_frames, round(max_seconds * reader.fps))
    frames = itertools.islice(reader, limit) if max_seconds is not None else reader
    track = track_frames(frames, reader.fps, total=limit, desc=f"track {path.name}")
    reader.close()
    if not track.valid.any():
        return None, reader.fps
    return filled_geometry(track.landmarks, track.matrices, track.valid, reader.width, reader.height), reader.fps


def sync_from_video(path: Path, audio: np.ndarray, max_seconds: float | None = None) -> lipsync.SyncResult:
    """Audio-visual offset of a video's tracked mouth opening against `audio` (16 kHz mono, from time 0)."""
    pts, fps = track_video(path, max_seconds)
    if not len(pts):
        raise InputError(f"{path}: no face found, so its lip sync cannot be measured")
    return lipsync.sync_offset(mouth_opening(pts), audio, fps)


def lipsync_metrics(src: dict, tracked: np.ndarray, tracked_fps: float, audio: np.ndarray,
                    fidelity: dict, predicted: tuple[np.ndarray, float] | None = None) -> dict[str, float]:
    """The metrics.json lip-sync keys: offset, confidence and opening in silence of the real held-out
    clip (its tracks at the source rate), of our rendered video (re-tracked) and, given `predicted` (the
    audio side's faces and their rate), of the mouth model's own output before rendering (the timing of
    the mouth itself, free of the renderer's and the re-tracking's noise); and the renderer's mouth-crop
    PSNR / sharpness, moved out of `fidelity` to the top level."""
    out = {k: fidelity.pop(k) for k in lipsync.MOUTH_METRICS}
    videos = [("real", src["pts3d"], float(src["fps"])), ("ours", tracked, tracked_fps)]
    for label, pts, fps in videos + ([("predicted", *predicted)] if predicted is not None else []):
        scale = float(face_width(pts).mean()) if len(pts) else float("nan")
        out.update(lipsync.sync_and_silence(mouth_opening(pts), audio, fps, scale, label))
    return out


def mouth_scores(pred: np.ndarray, real: np.ndarray, px_per_unit: float) -> dict:
    """M-LMD and opening correlation of two pose-free sequences; each is scaled to the real face width."""
    n = min(len(pred), len(real))
    pred = pred[:n] * (face_width(real).mean() / face_width(pred[:n]).mean())
    pred = pred - pred[:, M.MOUTH].mean((0, 1)) + real[:n, M.MOUTH].mean((0, 1))  # same mouth position
    return {"m_lmd_px": M.mouth_lmd(pred, real[:n], px_per_unit),
            "opening_correlation": M.correlation(mouth_opening(pred), mouth_opening(real[:n])), "frames": n}


def speaker_mouth_scores(path: Path, pred: np.ndarray, fps: float) -> dict:
    """When the driving file `path` is a video of its speaker: how well our predicted mouth (N, 73, 3) at `fps`
    follows the speaker's own tracked one, as the correlation of their openings at the video's frame times
    (the other mouth's shape differs; when it opens and closes should not). {} for audio, or no face."""
    if probe(path)["video"] is None:
        return {}
    pts, video_fps = track_video(path)
    if not len(pts):
        log.warning("%s: no face found, so our mouth cannot be compared with the speaker's", path)
        return {}
    opening = mouth_opening(pred)
    at = np.interp(np.arange(len(pts)) / video_fps, np.arange(len(opening)) / fps, opening)
    n = min(len(pts), int(len(opening) * video_fps / fps))  # the speaker's frames our prediction covers
    return {"opening_correlation_vs_speaker": M.correlation(at[:n], mouth_opening(pts)[:n]), "speaker_frames": n}


def audio_envelope(audio: np.ndarray, fps: float, n: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS loudness per video frame (n,)."""
    hop = sample_rate / fps
    return np.array([np.sqrt(np.mean(audio[int(i * hop) : int((i + 1) * hop)] ** 2) + 1e-12) for i in range(n)])


@dataclass(frozen=True)
class MetricWeights:
    """Weight files of the optional metrics (each None when not given)."""

    lpips_alexnet: Path | None = None
    lpips_lin: Path | None = None
    syncnet_ckpt: Path | None = None


def evaluate_identity(pipe: PortraitPipeline, identity: str, out_dir: Path, driving: dict[str, Path],
                      timings: dict, speech_dir: Path | None = None, weights: MetricWeights = MetricWeights()) -> Path:
    """Evaluate an identity's pipeline on its held-out clip (the demos of `driving` already written into
    out_dir); writes metrics.json and report.html in out_dir and returns the report.

    The LPIPS weights add LPIPS to the renderer's scores (lpips.py); the SyncNet weights add LSE-D / LSE-C
    of the real and the rendered videos (syncnet.py)."""
    from models.evaluation.report import write_report

    files = IdentityFiles(pipe.assets.root)
    val = files.clips("val")[0]
    clip = files.clip(val)
    src = load_npz(clip.tracks, "held-out clip tracks")
    real = load_npz(clip.model_tracks(pipe.fps), "held-out clip tracks")
    px_per_unit = float((face_width(real["pts2d"]) / face_width(real["pts3d"])).mean()) \
        * M.CROP_REFERENCE / pipe.assets.image_size[0]
    results: dict = {"identity": identity, "heldout_clip": val, "heldout_seconds": len(src["rot"]) / float(src["fps"])}
    lpips = None
    if weights.lpips_alexnet is not None:
        from models.evaluation.lpips import LPIPS

        lpips = LPIPS.from_files(weights.lpips_alexnet, weights.lpips_lin).to(pipe.renderer.device)
    fidelity, samples = renderer_fidelity(pipe, clip, src, lpips=lpips)
    results["renderer"] = fidelity
    audio = load_audio(clip.audio)
    t = time.perf_counter()
    pred = pipe.predict(audio, seed=0)
    speed = {"audio_side_fps": pred.n_frames / (time.perf_counter() - t),
             "render_fps": 1000 / fidelity["render_ms_per_frame"]}
    results["audio_to_mouth"] = mouth_scores(pred.face3d, real["pts3d"], px_per_unit)
    rendered = out_dir / driving["heldout"].stem / f"{driving['heldout'].stem}.mp4"
    tracked, rendered_fps = track_video(rendered)
    results["end_to_end"] = mouth_scores(tracked, real["pts3d"], px_per_unit) if len(tracked) else {}
    results.update(lipsync_metrics(src, tracked, rendered_fps, audio, fidelity, (pred.face3d, pipe.fps)))
    results["head_pose"] = {"sampled": sampled_pose_statistics(pipe, audio, pred),
                            "real": M.pose_statistics(real["rot"], real["trans"], pipe.fps),
                            "person": person_pose_statistics(files, pipe.fps, len(real["rot"]))}
    env = audio_envelope(audio, pipe.fps, pred.n_frames)
    results["mouth_vs_loudness"] = {"predicted": M.correlation(mouth_opening(pred.face3d), env),
                                    "real": M.correlation(mouth_opening(real["pts3d"]), env)}
    other = load_audio(driving["other_speaker"])
    pred_other = pipe.predict(other, seed=0)
    results["other_speaker"] = {
        "audio": str(driving["other_speaker"]), "seconds": len(other) / SAMPLE_RATE,
        "head_pose": sampled_pose_statistics(pipe, other, pred_other),
        "mouth_vs_loudness": M.correlation(mouth_opening(pred_other.face3d),
                                           audio_envelope(other, pipe.fps, pred_other.n_frames)),
        **speaker_mouth_scores(driving["other_speaker"], pred_other.face3d, pipe.fps)}
    results["speed"] = {**speed, **{k: round(v, 1) for k, v in timings.items()}}
    if weights.syncnet_ckpt is not None:
        results["lip_sync"] = lip_sync_scores(weights.syncnet_ckpt, clip, src, audio, rendered, other, driving,
                                              out_dir, pipe.renderer.device)
    done = {"LPIPS": lpips is not None, "LSE-C / LSE-D (SyncNet)": weights.syncnet_ckpt is not None}
    results["skipped_metrics"] = {k: v for k, v in SKIPPED.items() if not done.get(k)}
    results["training"] = _training_summary(pipe.cfg, speech_dir)
    series = {"real": mouth_opening(real["pts3d"]), "predicted": mouth_opening(pred.face3d),
              "rendered, tracked": mouth_opening(tracked) if len(tracked) else None}
    write_json(out_dir / "metrics.json", results)
    return write_report(out_dir, results, samples, series, pred, real, src, clip, rendered, driving, pipe.fps)


def sampled_pose_statistics(pipe: PortraitPipeline, audio: np.ndarray, first: Prediction,
                            draws: int = POSE_DRAWS) -> dict:
    """Head-pose statistics of `draws` head-motion samples of `audio` (seeds 0, 1, ...; `first` is seed 0's
    prediction, which the demo video shows) averaged over the draws, with the per-axis range of the spread."""
    stats = [M.pose_statistics(first.rotation, first.translation, pipe.fps)]
    for seed in range(1, draws):
        pred = pipe.predict(audio, seed=seed)
        stats.append(M.pose_statistics(pred.rotation, pred.translation, pipe.fps))
    return M.mean_pose_statistics(stats)


def person_pose_statistics(files: IdentityFiles, fps: float, window: int) -> dict:
    """The person's tracked head rotation on the training clips: its std per axis, and the range (5th to
    95th percentile) of that std over stretches of `window` frames (the held-out clip's length), which a
    short held-out clip's own spread falls in by chance."""
    rots = [load_npz(files.clip(name).model_tracks(fps), "training clip tracks", ("rot",))["rot"]
            for name in files.clips("train")]
    return {"rot_std_deg": np.concatenate(rots).std(0).tolist(),
            "window_rot_std_deg_range": M.window_std_range(rots, window), "window_seconds": window / fps}


def _checkpoint_summary(path: Path) -> dict:
    """{'checkpoint': path, 'iterations': its run's training iterations, 'distilled_from': how many mouth models
    it learnt the average of (--teacher_ckpts), when its training state says}."""
    info: dict = {"checkpoint": str(path)}
    parts = split_network_path(path)
    state = state_path(path.parent, parts[0]) if parts else None
    if state is not None and state.is_file():
        try:  # a summary line: an unreadable state (e.g. written by an older version) only loses it
            saved = load_file(state, "training state")
            info["iterations"] = int(saved["total_iters"])
            teachers = (saved.get("opt") or {}).get("teacher_ckpts")
            if teachers:
                info["distilled_from"] = len(teachers)
        except (InputError, KeyError, TypeError, ValueError) as err:
            log.warning("training summary: %s", str(err).splitlines()[0][:200])
    return info


def _training_summary(cfg: dict, speech_dir: Path | None) -> dict:
    """Iterations of the networks the config points at (from their training state); how much speech APC saw."""
    out = {}
    for stage in STAGES.values():
        infos = [_checkpoint_summary(path) for path in stage_checkpoints(cfg, stage.model)]
        out[stage.section] = infos[0] if len(infos) == 1 else {
            "checkpoint": ", ".join(i["checkpoint"] for i in infos), "ensemble": len(infos),
            **({"iterations": infos[0]["iterations"]} if "iterations" in infos[0] else {})}
    if speech_dir is not None and Path(speech_dir).is_dir():
        import soundfile as sf

        files = [f for f in Path(speech_dir).rglob("*") if f.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3")]
        out["apc_speech"] = {"files": len(files), "minutes": sum(sf.info(str(f)).duration for f in files) / 60}
    return out


def resample_to(values: np.ndarray, n: int) -> np.ndarray:
    """Stretch a series to n samples (for plots of series at different rates)."""
    return resample(values, len(values), n) if len(values) else values


def add_metric_weight_flags(p: argparse.ArgumentParser) -> None:
    """--lpips_alexnet / --lpips_lin / --syncnet_ckpt: the optional metrics' weight files."""
    p.add_argument("--lpips_alexnet", type=Path, default=None,
                   help="torchvision's ImageNet AlexNet (alexnet-owt-7be5be79.pth): with --lpips_lin, adds LPIPS")
    p.add_argument("--lpips_lin", type=Path, default=None, help="the LPIPS AlexNet heads (alex.pth of LPIPS v0.1)")
    p.add_argument("--syncnet_ckpt", type=Path, default=None,
                   help="SyncNet weights (syncnet_v2.model of syncnet_python): adds LSE-D / LSE-C to the report")


def metric_weights(p: argparse.ArgumentParser, args: argparse.Namespace) -> MetricWeights:
    """The weight flags of `add_metric_weight_flags`, checked (argparse error when they do not go together)."""
    if (args.lpips_alexnet is None) != (args.lpips_lin is None):
        p.error("--lpips_alexnet and --lpips_lin go together")
    return MetricWeights(args.lpips_alexnet, args.lpips_lin, args.syncnet_ckpt)


def demo_and_evaluate(identity: str, data_root: Path, config_dir: Path, results_dir: Path, other_audio: Path,
                      device: str, timings: dict, weights: MetricWeights = MetricWeights(),
                      speech_dir: Path | None = None) -> Path:
    """Drive the identity with its held-out tail's speech and with `other_audio`, then evaluate;
    returns the report (results_dir/<identity>/report.html)."""
    files = IdentityFiles(data_root / identity)
    if not files.root.is_dir():
        raise InputError(f"identity folder not found: {files.root} (make it with scripts/preprocess.py)")
    if not files.clips("val"):
        raise InputError(f"{files.split_list('val')}: no held-out clip to evaluate on (made by scripts/preprocess.py)")
    out = prepare_output_dir(results_dir / identity, "--results_dir", overwrite=True)
    tail = out / "heldout_tail.wav"  # the held-out tail's own speech, under a name the results can carry
    with atomic_write(tail) as tmp:
        shutil.copyfile(files.clip(files.clips("val")[0]).audio, tmp)
    driving = {"heldout": tail, "other_speaker": other_audio}
    pipe = PortraitPipeline.from_identity(identity, device, config_dir)
    for label, path in driving.items():
        t = time.perf_counter()
        log.info("demo: %s audio %s", label, path)
        audio = load_audio(path, pipe.sample_rate, what="--driving_audio")
        pipe.check_audio(audio, str(path))
        pipe.generate(audio, out / path.stem, path.stem, seed=0, batch_size=EVAL_BATCH)
        timings[f"demo_{label}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    log.info("evaluate")
    report = evaluate_identity(pipe, identity, out, driving, timings, speech_dir, weights)
    timings["evaluate_s"] = time.perf_counter() - t
    return report
