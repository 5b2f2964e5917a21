"""The audio side as streams: push audio of any length, get per-frame results as soon as the lookahead
allows, then `finish()` when the audio ends. Offline inference runs the same streams over the whole
clip, so a live session gives the same frames as an offline run (up to float rounding).

    FeatureStream  samples -> log-mel (120 Hz) -> APC (GRU state carried) -> manifold projection
    MouthStream    APC pairs -> Audio2Feature (LSTM state carried; frame t read at step t + 18)
                   -> mouth smoothing (<= smooth_lookahead frames ahead) -> post-processing -> face
    PoseStream     APC pairs -> Audio2Headpose (incremental WaveNet; pose t needs audio t + 15)
                   -> causal smoothing -> rotation, translation
At the end the features are padded with the last APC frame, as the release did for the mouth.
Frame t is final once audio up to frame t + max(18 + smooth_lookahead, 15) has arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import lfilter

from datasets.identity import IdentityAssets
from models.losses import gmm_sample
from models.networks import APC, Audio2FeatureNet, Audio2HeadposeNet
from models.networks.audio2headpose import window_index
from models.networks.wavenet import IncrementalWaveNet
from models.runtime.manifold import FeatureDatabase, project_to_manifold
from models.runtime.postprocess import mouth_faces
from models.runtime.settings import EncoderSettings, MouthSettings, PoseSettings, RuntimeSettings
from models.runtime.smoothing import CausalSmoother, SymmetricSmoother
from util.audio import MEL_PER_VIDEO_FRAME, LogMel
from util.geometry import denormalise_pose, project, project_landmarks, shoulder_points

NOISE_BLOCK = 1024  # frames of sampling noise drawn at once: the same draws for any chunking


class NoiseSource:
    """Normal and uniform draws for frame i, independent of how many frames a run has.

    With `correlation` > 0 (frames) the normal draws are AR(1) noise of that time constant, still unit
    variance per frame: y_0 = e_0, y_i = a y_(i-1) + sqrt(1 - a^2) e_i with a = exp(-1 / correlation) and e
    the independent draws. The pose model's per-frame innovations are tiny at 60 fps, so independent noise
    only makes the head jitter (which the smoothing removes, with most of the motion); slow noise makes
    it wander, as heads do (models/runtime/motion.py)."""

    def __init__(self, seed: int, ndim: int, correlation: float = 0.0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.ndim = ndim
        self.a = math.exp(-1.0 / correlation) if correlation > 0 else 0.0
        self.normal = torch.zeros(0, ndim)
        self.uniform = torch.zeros(0)

    def draw(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        while i >= len(self.normal):
            block = torch.randn(NOISE_BLOCK, self.ndim, generator=self.gen)
            if self.a > 0:
                block = self._correlate(block)
            self.normal = torch.cat([self.normal, block])
            self.uniform = torch.cat([self.uniform, torch.rand(NOISE_BLOCK, generator=self.gen)])
        return self.normal[i : i + 1], self.uniform[i : i + 1]

    def _correlate(self, e: torch.Tensor) -> torch.Tensor:
        """AR(1)-filter one block of independent draws, continuing from the previous block's last value."""
        x = e.double().numpy()
        if len(self.normal):
            prev = self.normal[-1].double().numpy()
        else:  # the first frame keeps its draw: the stationary start
            prev, x = x[0], x[1:]
        y = lfilter([math.sqrt(1 - self.a**2)], [1.0, -self.a], x, axis=0, zi=(self.a * prev)[None])[0]
        if not len(self.normal):
            y = np.concatenate([prev[None], y])
        return torch.from_numpy(y).float()


@dataclass
class AudioEncoder:
    """Audio samples -> log-mel -> APC features -> manifold projection (LSP §1.2-§1.4)."""

    apc: APC
    mel: LogMel
    database: FeatureDatabase | None  # the identity's APC features; None without projection
    settings: EncoderSettings
    device: torch.device


@dataclass
class AudioSide:
    """What the audio side of one identity runs: its networks, settings and assets, loaded once."""

    encoder: AudioEncoder
    mouth_net: Audio2FeatureNet | None  # None: a pose-only side (motion calibration)
    pose_net: Audio2HeadposeNet
    settings: RuntimeSettings
    assets: IdentityAssets
    device: torch.device


class FeatureStream:
    """Audio samples -> projected APC features (two per video frame)."""

    def __init__(self, encoder: AudioEncoder) -> None:
        self.enc = encoder
        self.buf = np.zeros(0, np.float64)
        self.buf_start = 0  # absolute index of buf[0]
        self.total = 0
        self.next_mel = 0
        self.state: list[torch.Tensor] | None = None

    def _features(self, stop: int) -> torch.Tensor:
        mel = self.enc.mel.from_clips(self.enc.mel.clips(self.buf, self.next_mel, stop, offset=self.buf_start))
        self.next_mel = stop
        keep = int(self.next_mel * self.enc.mel.cfg.hop) - self.buf_start
        self.buf, self.buf_start = self.buf[keep:], self.buf_start + keep
        if len(mel) == 0:
            return torch.zeros(0, self.enc.apc.cfg.hidden_size)
        with torch.no_grad():
            feats, self.state = self.enc.apc(torch.from_numpy(mel).to(self.enc.device)[None], self.state)
        feats = feats[0].cpu()
        if self.enc.database is not None:
            feats = project_to_manifold(feats, self.enc.database, self.enc.settings.knear, self.enc.settings.blend)
        return feats

    def push(self, samples: np.ndarray) -> torch.Tensor:
        self.buf = np.concatenate([self.buf, np.asarray(samples, np.float64)])
        self.total += len(samples)
        cfg = self.enc.mel.cfg
        stop = self.next_mel
        while int(stop * cfg.hop) + cfg.win_length <= self.total:
            stop += 1
        return self._features(stop)

    def finish(self) -> tuple[torch.Tensor, int]:
        """The last features (zero-padded audio) and the clip's frame count N."""
        n = self.enc.mel.cfg.num_video_frames(self.total)
        return self._features(max(self.next_mel, MEL_PER_VIDEO_FRAME * n)), n


class PairBuffer:
    """APC frames -> pairs (one per video frame), with the end padding of the release."""

    def __init__(self) -> None:
        self.odd: torch.Tensor | None = None
        self.last: torch.Tensor | None = None

    def push(self, feats: torch.Tensor) -> torch.Tensor:
        if len(feats):
            self.last = feats[-1:]
        if self.odd is not None:
            feats = torch.cat([self.odd, feats])
        n = len(feats) // 2 * 2
        self.odd = feats[n:] if n < len(feats) else None
        return feats[:n].reshape(n // 2, 2 * feats.shape[1])

    def padding(self, frames: int) -> torch.Tensor:
        """`frames` pairs of the last APC frame (LSP §1.5)."""
        return self.last.repeat(frames, 2)


@dataclass
class MouthOutput:
    face3d: np.ndarray  # (m, 73, 3) pose-free faces of frames start..start+m-1
    start: int


class MouthStream:
    """APC pairs -> post-processed pose-free faces."""

    def __init__(self, net: Audio2FeatureNet, settings: MouthSettings, assets: IdentityAssets,
                 device: torch.device) -> None:
        self.net, self.settings, self.assets, self.device = net, settings, assets, device
        self.state = None
        self.steps = 0  # LSTM steps run
        self.smoother = SymmetricSmoother(settings.sigma, settings.smooth_lookahead)
        self.next_face = 0
        self.base = assets.tracked_pts3d.mean(0)  # the release's std_mean_pts3d

    def _post(self, disp: np.ndarray) -> MouthOutput:
        start = self.next_face
        self.next_face += len(disp)
        return MouthOutput(mouth_faces(disp, self.assets, self.base, self.settings, start), start)

    def push(self, pairs: torch.Tensor, limit: int | None = None) -> MouthOutput:
        """APC pairs (k, 2 * d) -> the faces whose lookahead and smoothing are complete; `limit` (the
        clip's frame count) at the end of the audio."""
        if len(pairs):
            with torch.no_grad():
                out, self.state = self.net(pairs.to(self.device).reshape(1, -1, pairs.shape[1] // 2), self.state)
            out = out[0].cpu().double().numpy()
            first = self.steps
            self.steps += len(out)
            out = out[max(0, self.settings.frame_future - first) :]  # step s is the output for frame s - lookahead
        else:
            out = np.zeros((0, 75))
        if limit is not None:  # at the end: only the clip's frames
            done = self.smoother.received
            out = out[: max(0, limit - done)]
        return self._post(self.smoother.push(out.reshape(len(out), out.shape[1] // 3, 3)))

    def finish(self, pairs: PairBuffer, n_frames: int) -> MouthOutput:
        """End of audio: pad with the last APC frame for the lookahead, then flush the smoother."""
        pad = pairs.padding(self.settings.frame_future)
        head = self.push(pad, limit=n_frames)
        tail = self._post(self.smoother.finish())
        return MouthOutput(np.concatenate([head.face3d, tail.face3d]), head.start)


class PoseStream:
    """APC pairs -> sampled, smoothed head rotation (degrees) and translation."""

    def __init__(self, net: Audio2HeadposeNet, settings: PoseSettings, mean_trans: np.ndarray, seed: int,
                 sigma_scale: float, device: torch.device, rest_pose: np.ndarray | None = None) -> None:
        """`rest_pose` (6,): the person's mean pose in the model's space, which the smoothed motion eases in
        from (IdentityAssets.rest_pose); None starts at the first sample."""
        self.net, self.settings, self.mean_trans, self.device = net, settings, mean_trans, device
        self.sigma_scale = sigma_scale
        self.cfg, self.rf = net.cfg, net.receptive_field
        self.inc = IncrementalWaveNet(net.WaveNet)
        self.noise = NoiseSource(seed, self.cfg.ndim, settings.noise_correlation)
        self.cond = np.zeros((0, len(self.inc.buffers), 2 * self.inc.dil), np.float32)
        self.cond_start = 0  # pair index of cond[0]
        self.next_pose = 0
        self.last = None
        rest = None if rest_pose is None else np.asarray(rest_pose, np.float64)
        self.rot_smoother = CausalSmoother(settings.rot_sigma, None if rest is None else rest[:3] * settings.rot_gain)
        self.trans_smoother = CausalSmoother(settings.trans_sigma,
                                             None if rest is None else rest[3:6] * settings.trans_gain)
        self.motion_gain = np.asarray(settings.motion_gain, np.float64)
        self.motion_offset = np.asarray(settings.motion_offset, np.float64)

    def _sample(self, out: np.ndarray) -> np.ndarray:
        noise, uniform = self.noise.draw(self.next_pose)
        s = gmm_sample(torch.from_numpy(out), self.cfg.ncenter, self.cfg.ndim, self.sigma_scale, noise, uniform)
        self.next_pose += 1
        return s[0].numpy()

    def push(self, pairs: torch.Tensor, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """APC pairs (k, 2 * d) -> (rotation (m, 3), translation (m, 3), raw samples (m, ndim)) of the
        poses whose audio lookahead has arrived; `limit` (the clip's frame count) at the end."""
        if len(pairs):
            with torch.no_grad():
                c = self.net.condition(pairs.to(self.device).reshape(1, -1, pairs.shape[1] // 2))
            self.cond = np.concatenate([self.cond, self.inc.project_condition(c)[0]])
        ff, n_cond = self.settings.frame_future, self.cond_start + len(self.cond)
        samples = []
        stop = n_cond - ff if limit is None else min(limit, n_cond - ff)
        if self.next_pose == 0 and stop > 0:
            idx = window_index(1, self.rf, ff).numpy()[: self.rf]  # prime: rf steps, all with zero history
            out = self.inc.prime(np.zeros((1, self.rf, self.cfg.ndim), np.float32), self.cond[None, idx])[:, -1]
            self.last = self._sample(out)
            samples.append(self.last)
        while self.next_pose < stop:
            j = self.next_pose + ff - self.cond_start
            out = self.inc.step(self.last[None].astype(np.float32), self.cond[j : j + 1])
            self.last = self._sample(out)
            samples.append(self.last)
        drop = self.next_pose + ff - self.cond_start - 1  # keep from the next pose's condition on
        if self.next_pose > 0 and drop > 0:
            self.cond, self.cond_start = self.cond[drop:], self.cond_start + drop
        raw = np.array(samples, np.float64).reshape(-1, self.cfg.ndim)
        pose = raw[:, :6] * self.motion_gain + self.motion_offset
        smoothed = np.concatenate([self.rot_smoother.push(pose[:, 0:3] * self.settings.rot_gain),
                                   self.trans_smoother.push(pose[:, 3:6] * self.settings.trans_gain)], 1)
        rot, trans = denormalise_pose(smoothed, self.mean_trans)
        return rot, trans, raw

    def finish(self, pad: torch.Tensor, n_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """End of audio: repeat the pair `pad` (1, 2 * d) up to the last pose's lookahead (the runtime pads
        with the last APC frame, PairBuffer.padding(1))."""
        missing = n_frames + self.settings.frame_future - (self.cond_start + len(self.cond))
        return self.push(pad.repeat(max(0, missing), 1), limit=n_frames)


@dataclass
class FrameBatch:
    """Audio-side results of frames start..start+m-1."""

    start: int
    face3d: np.ndarray  # (m, 73, 3)
    rotation: np.ndarray  # (m, 3)
    translation: np.ndarray  # (m, 3)
    face2d: np.ndarray  # (m, 73, 2)
    shoulders2d: np.ndarray  # (m, 18, 2)
    raw_pose: np.ndarray  # (m, ndim) samples, or (m, 0) with explicit poses

    ARRAYS = ("face3d", "rotation", "translation", "face2d", "shoulders2d", "raw_pose")

    def __len__(self) -> int:
        return len(self.face3d)

    def rows(self, i: int, j: int) -> FrameBatch:
        """Frames start+i .. start+j-1."""
        return FrameBatch(self.start + i, *(getattr(self, k)[i:j] for k in self.ARRAYS))

    @staticmethod
    def concat(batches: list[FrameBatch]) -> FrameBatch:
        """Consecutive batches as one."""
        arrays = (np.concatenate([getattr(b, k) for b in batches]) for k in FrameBatch.ARRAYS)
        return FrameBatch(batches[0].start, *arrays)


class AudioSideStream:
    """Samples in, per-frame landmarks, pose and shoulders out (see the module docstring).

    Args:
        poses: explicit (rotation (N, 3), translation (N, 3)) per frame index, instead of sampling.
        sigma_scale: of the sampled head motion (None: the identity's setting).
    """

    def __init__(self, side: AudioSide, seed: int = 0, sigma_scale: float | None = None,
                 poses: tuple[np.ndarray, np.ndarray] | None = None, keep_features: bool = False) -> None:
        self.side = side
        self.kept_features: list[np.ndarray] | None = [] if keep_features else None  # APC features (2 per frame)
        settings = side.settings
        scale = settings.pose.sigma_scale if sigma_scale is None else sigma_scale
        self.features, self.pairs = FeatureStream(side.encoder), PairBuffer()
        self.mouth = MouthStream(side.mouth_net, settings.mouth, side.assets, side.device)
        self.pose = (PoseStream(side.pose_net, settings.pose, side.assets.mean_trans, seed, scale, side.device,
                                side.assets.rest_pose)
                     if poses is None else None)
        self.fixed_poses = poses
        self.faces: list[np.ndarray] = []
        self.rots: list[np.ndarray] = []
        self.trans: list[np.ndarray] = []
        self.raws: list[np.ndarray] = []
        self.emitted = 0
        self.finished = False

    def _collect(self, mouth: MouthOutput, pose: tuple | None) -> FrameBatch | None:
        if len(mouth.face3d):
            self.faces.append(mouth.face3d)
        if pose is not None and len(pose[0]):
            self.rots.append(pose[0])
            self.trans.append(pose[1])
            self.raws.append(pose[2])
        faces = np.concatenate(self.faces) if self.faces else np.zeros((0, 73, 3))
        if self.pose is None:
            n = len(faces)
            rot, trans = (p[self.emitted : self.emitted + n] for p in self.fixed_poses)
            raw = np.zeros((n, 0))
        else:
            rot, trans, raw = (np.concatenate(x) if x else np.zeros((0, 3)) for x in (self.rots, self.trans, self.raws))
            n = min(len(faces), len(rot))
        if n == 0:
            return None
        batch = self._project(faces[:n], rot[:n], trans[:n], raw[:n])
        self.faces = [faces[n:]]
        if self.pose is not None:
            self.rots, self.trans, self.raws = [rot[n:]], [trans[n:]], [raw[n:]]
        return batch

    def _project(self, face3d: np.ndarray, rot: np.ndarray, trans: np.ndarray, raw: np.ndarray) -> FrameBatch:
        a, gain = self.side.assets, self.side.settings.pose.shoulder_gain
        face2d = project_landmarks(face3d, rot, trans, a.scale, a.intrinsic)
        shoulders2d = project(shoulder_points(a.shoulders3d, a.ref_trans, trans, gain), a.intrinsic) + a.shoulder_offset
        batch = FrameBatch(self.emitted, face3d, rot, trans, face2d, shoulders2d, raw)
        self.emitted += len(face3d)
        return batch

    def _keep(self, feats: torch.Tensor) -> torch.Tensor:
        if self.kept_features is not None and len(feats):
            self.kept_features.append(feats.cpu().numpy())
        return feats

    def push(self, samples: np.ndarray) -> FrameBatch | None:
        """Add audio (16 kHz mono float); returns the frames that became final, if any."""
        if self.finished:
            raise RuntimeError("push() after finish()")
        pairs = self.pairs.push(self._keep(self.features.push(samples)))
        mouth = self.mouth.push(pairs)
        pose = self.pose.push(pairs) if self.pose is not None else None
        return self._collect(mouth, pose)

    def finish(self) -> tuple[FrameBatch | None, int]:
        """End of audio: the remaining frames and the clip's total frame count N."""
        self.finished = True
        feats, n = self.features.finish()
        self._keep(feats)
        if n == 0 or (self.pairs.last is None and len(feats) == 0):
            return None, n
        pairs = self.pairs.push(feats)
        first = self._collect(self.mouth.push(pairs, limit=n),
                              self.pose.push(pairs, limit=n) if self.pose is not None else None)
        last = self._collect(self.mouth.finish(self.pairs, n),
                             self.pose.finish(self.pairs.padding(1), n) if self.pose is not None else None)
        return join_batches(first, last), n


def join_batches(a: FrameBatch | None, b: FrameBatch | None) -> FrameBatch | None:
    """Two consecutive batches as one (either may be None)."""
    batches = [x for x in (a, b) if x is not None]
    return FrameBatch.concat(batches) if batches else None


