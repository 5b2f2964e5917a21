"""Head-motion calibration: sampled head motion as lively as the person's own.

An audio-driven pose model is under-dispersed: its samples stay near the mean path, and how much depends on
the axis (on the bundled example, sampled yaw moved at a third of the tracked yaw's spread on the very
clips it was trained on) and on the sampling sigma (which mostly sets how fast the head moves, not how far).
The original tuned a rotation and a translation gain per identity by hand (`Headpose.AMP`, LSP §2.2). Here
they are measured: the trained model is sampled over speech it has never seen (other speakers: the bundled
LibriSpeech utterances by default) and compared with the person's tracked poses on the training clips. On
its own training audio the model moves more (it partly remembers the clips: on the example, sampled yaw
std 1.23 deg on training audio, 0.46 on the held-out tail, 0.59 on unseen LibriSpeech), so calibrating
there would leave new speech under-animated.
- For each sigma of a grid, a per-dimension gain makes the sampled spread (std of rotation x, y, z and
  translation x, y, z) equal the tracked one, and an offset puts the sampled mean on the tracked mean.
- The sigma and rotation smoothing (the causal one the runtime applies; 5 to 15 frames at 60 fps)
  whose calibrated rotation speed (mean degrees per second) is closest to the tracked speed win: large gains
  also amplify the frame-to-frame wobble of the model's mean path, which only more smoothing takes out.
The result is written to config/<id>.yaml as Headpose.sigma, Headpose.smooth, Headpose.motion_gain and
Headpose.motion_offset (PoseSettings applies the gain and offset to every sampled pose before the release's
gains); train.py does it after
training audio2headpose (--motion_calibration off to keep the config's values).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datasets.audio_dataset import AUDIO_SUFFIXES
from datasets.audiovisual_dataset import load_clip
from datasets.identity import PROJECT_ROOT, STAGES, IdentityFiles, config_path, load_config, set_config_value
from models.runtime.pipeline import load_audio_side
from models.runtime.settings import PoseSettings
from models.runtime.smoothing import CausalSmoother
from models.runtime.streams import AudioEncoder, FeatureStream, PairBuffer, PoseStream
from util.audio import SAMPLE_RATE, load_audio
from util.errors import InputError
from util.geometry import normalise_pose

log = logging.getLogger("lsp")

SIGMAS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)  # sampling sigma scales tried
GAIN_RANGE = (0.5, 8.0)  # a gain outside it means the model, not its spread, is wrong: clipped (the fast
# example's yaw needs 7: clipped at 4, its held-out yaw spread was 36 % short of the real one)
WEAK_GAIN = 4.0  # above it the model barely moves on that axis by itself: worth a warning
ROT_SMOOTH_SECONDS = (5 / 60, 7.5 / 60, 10 / 60, 15 / 60)  # rotation smoothing tried (the release's 5 frames at 60
# fps and more); absolute, so calibrating twice gives the same result
POSE_AXES = ("pitch", "yaw", "roll", "x", "y", "z")  # rotation x, y, z and translation x, y, z
SEEDS = (0,)  # draws per utterance (two minutes of speech give stable statistics with one)
BUNDLED_SPEECH = PROJECT_ROOT / "data" / "example_src" / "speech"  # 12 min of LibriSpeech (not any identity's)
SPEECH_SECONDS = 120.0  # of unseen speech sampled


@dataclass(frozen=True)
class MotionCalibration:
    sigma: float
    rot_smooth: float  # causal smoothing of the rotation, frames
    trans_smooth: float  # of the translation (kept from the config)
    gain: np.ndarray  # (6,) rotation xyz, translation xyz
    offset: np.ndarray  # (6,)
    real_std: np.ndarray  # (6,) tracked, training clips
    sampled_std: np.ndarray  # (6,) sampled at `sigma` before calibration
    real_speed: float  # rotation degrees / s, tracked
    speed: float  # rotation degrees / s, sampled at `sigma` after calibration
    seconds: float  # of unseen speech sampled

    def config_values(self) -> dict[str, object]:
        return {"sigma": float(self.sigma), "smooth": [float(self.rot_smooth), float(self.trans_smooth)],
                "motion_gain": [round(float(g), 4) for g in self.gain],
                "motion_offset": [round(float(b), 4) for b in self.offset]}


def sample_clip_poses(net: torch.nn.Module, settings: PoseSettings, apc_pairs: np.ndarray, sigma: float, seed: int,
                      device: torch.device) -> np.ndarray:
    """The pose the runtime samples for one clip's APC pairs (n, 2 * d), smoothed, without any gain or
    calibration, in the model's normalised units: (n, 6)."""
    plain = dataclasses.replace(settings, rot_gain=1.0, trans_gain=1.0, motion_gain=(1.0,) * 6,
                                motion_offset=(0.0,) * 6)
    stream = PoseStream(net, plain, np.zeros(3), seed, sigma, device)
    pairs = torch.from_numpy(np.ascontiguousarray(apc_pairs, np.float32))
    rot, trans, _ = stream.push(pairs)
    rot2, trans2, _ = stream.finish(pairs[-1:], len(pairs))
    return normalise_pose(np.concatenate([rot, rot2]), np.concatenate([trans, trans2]), np.zeros(3))


def rotation_speed(poses: list[np.ndarray], fps: float) -> float:
    """Mean rotation speed (degrees / s) over clips, never across a clip boundary."""
    steps = np.concatenate([np.linalg.norm(np.diff(p[:, :3], axis=0), axis=1) for p in poses if len(p) > 1])
    return float(steps.mean() * fps)


def speech_pairs(encoder: AudioEncoder, audio: np.ndarray) -> np.ndarray:
    """The APC feature pairs (n, 2 * d) the runtime feeds the pose model for `audio` (16 kHz)."""
    stream, buffer = FeatureStream(encoder), PairBuffer()
    head = stream.push(audio)
    tail, n = stream.finish()
    return buffer.push(torch.cat([head, tail]))[:n].numpy()


def calibrate(net: torch.nn.Module, settings: PoseSettings, clips: list[dict[str, np.ndarray]],
              speech: list[np.ndarray], fps: float, device: torch.device,
              sigmas: tuple[float, ...] = SIGMAS) -> MotionCalibration:
    """Sigma, gain and offset that make the motion sampled for `speech` (APC pairs of unseen speech) match
    the tracked motion of `clips` (load_clip dicts of the training clips); see the module docstring."""
    real = [c["pose"][:, :6].astype(np.float64) for c in clips]
    real_all = np.concatenate(real)
    real_std, real_mean, real_speed = real_all.std(0), real_all.mean(0), rotation_speed(real, fps)
    unsmoothed = dataclasses.replace(settings, rot_sigma=0.0)
    smooths = tuple(t * fps for t in ROT_SMOOTH_SECONDS)
    best = None
    for sigma in sigmas:
        raw = [sample_clip_poses(net, unsmoothed, pairs, sigma, seed, device) for seed in SEEDS for pairs in speech]
        for smooth in smooths:
            sampled = [np.concatenate([CausalSmoother(smooth).push(p[:, :3]), p[:, 3:]], 1) for p in raw]
            s_all = np.concatenate(sampled)
            s_std = s_all.std(0)
            gain = np.clip(real_std / np.maximum(s_std, 1e-8), *GAIN_RANGE)
            offset = real_mean - gain * s_all.mean(0)
            speed = rotation_speed([p * gain + offset for p in sampled], fps)
            miss = abs(np.log(max(speed, 1e-8) / max(real_speed, 1e-8)))
            if best is None or miss < best[0]:
                best = (miss, MotionCalibration(sigma, smooth, settings.trans_sigma, gain, offset, real_std, s_std,
                                                real_speed, speed, len(s_all) / len(SEEDS) / fps))
    weak = [name for name, g in zip(POSE_AXES, best[1].gain) if g > WEAK_GAIN]
    if weak:
        log.warning("head motion: the pose model barely moves in %s by itself (gain > %g); longer audio2headpose "
                    "training would give motion of its own rather than amplified", ", ".join(weak), WEAK_GAIN)
    return best[1]


def speech_files(folder: Path, seconds: float = SPEECH_SECONDS, flag: str = "--motion_speech") -> list[np.ndarray]:
    """The first `seconds` of the audio files under `folder` (sorted; or the one file `folder`), at 16 kHz."""
    folder = Path(folder)
    paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not paths:
        raise InputError(f"{flag} {folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    out, total = [], 0.0
    for path in paths:
        if total >= seconds:
            break
        out.append(load_audio(path, SAMPLE_RATE))
        total += len(out[-1]) / SAMPLE_RATE
    return out


def calibrate_identity(identity: str, config_dir: Path, speech: Path | None = None,
                       device: torch.device | str = "cpu") -> MotionCalibration:
    """Calibrate the head motion of the networks config/<identity>.yaml points at on unseen `speech` (a
    folder; default the bundled LibriSpeech), and write the result into that config."""
    device = torch.device(device)
    cfg = load_config(identity, config_dir)
    side = load_audio_side(cfg, device, with_mouth=False)
    files = IdentityFiles(config_path(cfg, ("dataset_params", "root")))
    clips = [load_clip(files, name, side.settings.fps) for name in files.clips("train")]
    with torch.no_grad():
        pairs = [speech_pairs(side.encoder, audio) for audio in speech_files(speech or BUNDLED_SPEECH)]
    cal = calibrate(side.pose_net.eval(), side.settings.pose, clips, pairs, side.settings.fps, device)
    for key, value in cal.config_values().items():
        set_config_value(Path(config_dir), identity, ("model_params", STAGES["audio2headpose"].section, key), value)
    log.info("head motion calibrated on %.0f s of unseen speech: sigma %g, rotation smoothing %g, gain %s; rotation "
             "std tracked %s vs sampled %s deg, speed %.1f vs %.1f deg/s after calibration", cal.seconds, cal.sigma,
             cal.rot_smooth,
             np.round(cal.gain, 2).tolist(), np.round(cal.real_std[:3], 2).tolist(),
             np.round(cal.sampled_std[:3], 2).tolist(), cal.real_speed, cal.speed)
    return cal
