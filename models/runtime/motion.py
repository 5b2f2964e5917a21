"""Head-motion calibration: sampled head motion as lively as the person's own.

An audio-driven pose model is under-dispersed: its samples stay near the mean path, and how much depends on
the axis, on the training seed (on the bundled example, the same recipe's sampled yaw spread was 0.36 deg with
seed 0 and 0.22 with seed 1, the tracked one 3.54) and on the sampling sigma, which mostly sets how fast
the head moves, not how far: at 60 fps the model's per-frame innovations are tiny, so independent noise
makes the head jitter, and the smoothing that removes the jitter removes the motion with it. The original
tuned a rotation and a translation gain per identity by hand (`Headpose.AMP`, LSP §2.2). Here:
- The sampling noise is slow (`Headpose.noise_correlation`: AR(1) noise with a time constant of 1/6 s,
  streams.NoiseSource), so the model's own dynamics turn it into wandering motion rather than jitter:
  on the example the calibrated gains fell from 4-16 to 2-4.
- The trained model is sampled over two kinds of speech it has not learned the motion of: speech of other
  speakers (the bundled LibriSpeech utterances by default) and the person's own training audio. The
  person's voice drives more motion (on the example, the held-out tail's pitch spread was 40 % above that
  of LibriSpeech), other voices less, and the model partly remembers its training clips: the calibration
  matches the geometric mean of the two, so that neither own speech nor another voice is far off.
- For each sigma of a grid, a per-dimension gain makes that spread (std of rotation x, y, z and
  translation x, y, z) equal the tracked one on the training clips, and an offset puts the mean of the
  sampled means on the tracked mean.
- The sigma and rotation smoothing (the causal one the runtime applies; 5 to 15 frames at 60 fps)
  whose calibrated rotation speed (mean degrees per second, geometric mean over the two kinds) is closest
  to the tracked speed win: large gains also amplify the frame-to-frame wobble of the model's mean path,
  which only more smoothing takes out.
The result is written to config/<id>.yaml as Headpose.sigma, Headpose.smooth, Headpose.noise_correlation,
Headpose.motion_gain and Headpose.motion_offset (PoseSettings applies the gain and offset to every sampled
pose before the release's gains); train.py does it after training audio2headpose (--motion_calibration off
to keep the config's values).
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
from util.io import read_yaml

log = logging.getLogger("lsp")

SIGMAS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)  # sampling sigma scales tried
GAIN_RANGE = (0.5, 8.0)  # a gain outside it means the model, not its spread, is wrong: clipped (the fast
# example's yaw needs 7: clipped at 4, its held-out yaw spread was 36 % short of the real one)
WEAK_GAIN = 4.0  # above it the model barely moves on that axis by itself: worth a warning
ROT_SMOOTH_SECONDS = (5 / 60, 7.5 / 60, 10 / 60, 15 / 60)  # rotation smoothing tried (the release's 5 frames at 60
# fps and more); absolute, so calibrating twice gives the same result
POSE_AXES = ("pitch", "yaw", "roll", "x", "y", "z")  # rotation x, y, z and translation x, y, z
NOISE_CORRELATION_SECONDS = 1 / 6  # time constant of the sampling noise (10 frames at 60 fps)
SEEDS = (0,)  # draws per utterance (two minutes of speech give stable statistics with one)
BUNDLED_SPEECH = PROJECT_ROOT / "data" / "example_src" / "speech"  # 12 min of LibriSpeech (not any identity's)
SPEECH_SECONDS = 120.0  # of unseen speech sampled


@dataclass(frozen=True)
class MotionCalibration:
    sigma: float
    noise_correlation: float  # frames
    rot_smooth: float  # causal smoothing of the rotation, frames
    trans_smooth: float  # of the translation (kept from the config)
    gain: np.ndarray  # (6,) rotation xyz, translation xyz
    offset: np.ndarray  # (6,)
    real_std: np.ndarray  # (6,) tracked, training clips
    sampled_std: np.ndarray  # (6,) sampled at `sigma` before calibration (geometric mean over the speech sets)
    real_speed: float  # rotation degrees / s, tracked
    speed: float  # rotation degrees / s, sampled at `sigma` after calibration
    seconds: float  # of speech sampled (other speakers' and the person's)

    def config_values(self) -> dict[str, object]:
        return {"sigma": float(self.sigma), "smooth": [float(self.rot_smooth), float(self.trans_smooth)],
                "noise_correlation": round(float(self.noise_correlation), 4),
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
              speech: list[list[np.ndarray]], fps: float, device: torch.device,
              sigmas: tuple[float, ...] = SIGMAS) -> MotionCalibration:
    """Sigma, gain and offset that make the motion sampled for the sets of `speech` (each a list of APC pairs
    (n, 2 * d) the model has not learned the motion of) match the tracked motion of `clips` (load_clip
    dicts of the training clips), on the geometric mean over the sets; see the module docstring."""
    real = [c["pose"][:, :6].astype(np.float64) for c in clips]
    real_all = np.concatenate(real)
    real_std, real_mean, real_speed = real_all.std(0), real_all.mean(0), rotation_speed(real, fps)
    unsmoothed = dataclasses.replace(settings, rot_sigma=0.0)
    smooths = tuple(t * fps for t in ROT_SMOOTH_SECONDS)
    best = None
    for sigma in sigmas:
        raw = [[sample_clip_poses(net, unsmoothed, pairs, sigma, seed, device) for seed in SEEDS for pairs in group]
               for group in speech]
        for smooth in smooths:
            sets = [[np.concatenate([CausalSmoother(smooth).push(p[:, :3]), p[:, 3:]], 1) for p in group]
                    for group in raw]
            s_std = np.exp(np.mean([np.log(np.maximum(np.concatenate(g).std(0), 1e-8)) for g in sets], 0))
            gain = np.clip(real_std / s_std, *GAIN_RANGE)
            offset = real_mean - gain * np.mean([np.concatenate(g).mean(0) for g in sets], 0)
            speed = float(np.exp(np.mean([np.log(max(rotation_speed([p * gain + offset for p in g], fps), 1e-8))
                                          for g in sets])))
            miss = abs(np.log(speed / max(real_speed, 1e-8)))
            if best is None or miss < best[0]:
                seconds = sum(len(p) for g in sets for p in g) / len(SEEDS) / fps
                best = (miss, MotionCalibration(sigma, settings.noise_correlation, smooth, settings.trans_sigma, gain,
                                                offset, real_std, s_std, real_speed, speed, seconds))
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


def is_calibrated(config: Path) -> bool:
    """Whether config/<id>.yaml holds a head-motion calibration (its gains)."""
    params = read_yaml(config).get("model_params", {})
    section = params.get(STAGES["audio2headpose"].section, {}) if isinstance(params, dict) else {}
    return isinstance(section, dict) and "motion_gain" in section


def calibrate_identity(identity: str, config_dir: Path, speech: Path | None = None,
                       device: torch.device | str = "cpu") -> MotionCalibration:
    """Calibrate the head motion of the networks config/<identity>.yaml points at on other speakers' `speech`
    (a folder; default the bundled LibriSpeech) and the identity's own training audio, and write the result
    into that config."""
    device = torch.device(device)
    cfg = load_config(identity, config_dir)
    side = load_audio_side(cfg, device, with_mouth=False)
    files = IdentityFiles(config_path(cfg, ("dataset_params", "root")))
    clips = [load_clip(files, name, side.settings.fps) for name in files.clips("train")]
    with torch.no_grad():
        others = [speech_pairs(side.encoder, audio) for audio in speech_files(speech or BUNDLED_SPEECH)]
    settings = dataclasses.replace(side.settings.pose, noise_correlation=NOISE_CORRELATION_SECONDS * side.settings.fps)
    cal = calibrate(side.pose_net.eval(), settings, clips, [others, [c["apc"] for c in clips]], side.settings.fps,
                    device)
    for key, value in cal.config_values().items():
        set_config_value(Path(config_dir), identity, ("model_params", STAGES["audio2headpose"].section, key), value)
    log.info("head motion calibrated on %.0f s of speech (other speakers' and the person's): sigma %g, rotation "
             "smoothing %g, gain %s; rotation std tracked %s vs sampled %s deg, speed %.1f vs %.1f deg/s after "
             "calibration", cal.seconds, cal.sigma,
             cal.rot_smooth,
             np.round(cal.gain, 2).tolist(), np.round(cal.real_std[:3], 2).tolist(),
             np.round(cal.sampled_std[:3], 2).tolist(), cal.real_speed, cal.speed)
    return cal
