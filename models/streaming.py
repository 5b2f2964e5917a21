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

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from models.losses import gmm_sample
from models.networks.audio2headpose import _window_index
from models.networks.wavenet import IncrementalWaveNet
from util import postprocess
from util.audio import MEL_PER_VIDEO_FRAME
from util.manifold import project_to_manifold
from util.smoothing import CausalSmoother, SymmetricSmoother

NOISE_BLOCK = 1024  # frames of sampling noise drawn at once: the same draws for any chunking


class NoiseSource:
    """Normal and uniform draws for frame i, independent of how many frames a run has."""

    def __init__(self, seed: int, ndim: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.ndim = ndim
        self.normal = torch.zeros(0, ndim)
        self.uniform = torch.zeros(0)

    def draw(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        while i >= len(self.normal):
            self.normal = torch.cat([self.normal, torch.randn(NOISE_BLOCK, self.ndim, generator=self.gen)])
            self.uniform = torch.cat([self.uniform, torch.rand(NOISE_BLOCK, generator=self.gen)])
        return self.normal[i : i + 1], self.uniform[i : i + 1]


class FeatureStream:
    """Audio samples -> projected APC features (two per video frame)."""

    def __init__(self, encoder) -> None:  # noqa: ANN001 - models.pipeline.AudioEncoder
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
            feats = project_to_manifold(feats, self.enc.database, self.enc.knear, self.enc.blend)
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

    def __init__(self, mouth) -> None:  # noqa: ANN001 - models.pipeline.MouthPredictor
        self.m = mouth
        self.state = None
        self.steps = 0  # LSTM steps run
        self.smoother = SymmetricSmoother(mouth.sigma, mouth.smooth_lookahead)
        self.next_face = 0
        self.base = mouth.assets.tracked_pts3d.mean(0)  # the release's std_mean_pts3d

    def _post(self, disp: np.ndarray) -> MouthOutput:
        start = self.next_face
        self.next_face += len(disp)
        faces = postprocess.mouth_faces(disp, self.m.assets, self.base, self.m.amp, self.m.use_jaw, start)
        return MouthOutput(faces, start)

    def push(self, pairs: torch.Tensor, limit: int | None = None) -> MouthOutput:
        if len(pairs):
            with torch.no_grad():
                out, self.state = self.m.net(pairs.to(self.m.device).reshape(1, -1, pairs.shape[1] // 2), self.state)
            out = out[0].cpu().double().numpy()
            first = self.steps
            self.steps += len(out)
            out = out[max(0, self.m.frame_future - first) :]  # step s is the output for frame s - frame_future
        else:
            out = np.zeros((0, 75))
        if limit is not None:  # at the end: only the clip's frames
            done = self.smoother.received
            out = out[: max(0, limit - done)]
        return self._post(self.smoother.push(out.reshape(len(out), out.shape[1] // 3, 3)))

    def finish(self, pairs: PairBuffer, n_frames: int) -> MouthOutput:
        pad = pairs.padding(self.m.frame_future)
        head = self.push(pad, limit=n_frames)
        tail = self._post(self.smoother.finish())
        return MouthOutput(np.concatenate([head.face3d, tail.face3d]), head.start)


class PoseStream:
    """APC pairs -> sampled, smoothed head rotation (degrees) and translation."""

    def __init__(self, pose, seed: int, sigma_scale: float) -> None:  # noqa: ANN001 - HeadPosePredictor
        self.p, self.sigma_scale = pose, sigma_scale
        self.cfg, self.rf = pose.net.cfg, pose.net.receptive_field
        self.inc = IncrementalWaveNet(pose.net.WaveNet)
        self.noise = NoiseSource(seed, self.cfg.ndim)
        self.cond = np.zeros((0, len(self.inc.buffers), 2 * self.inc.dil), np.float32)
        self.cond_start = 0  # pair index of cond[0]
        self.next_pose = 0
        self.last = None
        self.rot_smoother = CausalSmoother(pose.sigmas[0])
        self.trans_smoother = CausalSmoother(pose.sigmas[1])

    def _sample(self, out: np.ndarray) -> np.ndarray:
        noise, uniform = self.noise.draw(self.next_pose)
        s = gmm_sample(torch.from_numpy(out), self.cfg.ncenter, self.cfg.ndim, self.sigma_scale, noise, uniform)
        self.next_pose += 1
        return s[0].numpy()

    def push(self, pairs: torch.Tensor, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(pairs):
            with torch.no_grad():
                c = self.p.net.condition(pairs.to(self.p.device).reshape(1, -1, pairs.shape[1] // 2))
            self.cond = np.concatenate([self.cond, self.inc.project_condition(c)[0]])
        ff, n_cond = self.p.frame_future, self.cond_start + len(self.cond)
        samples = []
        stop = n_cond - ff if limit is None else min(limit, n_cond - ff)
        if self.next_pose == 0 and stop > 0:
            idx = _window_index(1, self.rf, ff).numpy()[: self.rf]  # prime: rf steps, all with zero history
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
        g_rot, g_trans = self.p.gains
        rot = self.rot_smoother.push(raw[:, 0:3] * g_rot)
        trans = self.trans_smoother.push(raw[:, 3:6] * g_trans) + self.p.assets.mean_trans
        rot[:, 0] += postprocess.ROT_X_OFFSET
        return rot, trans, raw

    def finish(self, pairs: PairBuffer, n_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        missing = n_frames + self.p.frame_future - (self.cond_start + len(self.cond))
        return self.push(pairs.padding(max(0, missing)), limit=n_frames)


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
    """

    def __init__(self, pipe, seed: int = 0, sigma_scale: float | None = None,  # noqa: ANN001
                 poses: tuple[np.ndarray, np.ndarray] | None = None, keep_features: bool = False) -> None:
        self.pipe = pipe
        self.kept_features: list[np.ndarray] | None = [] if keep_features else None  # APC features (2 per frame)
        scale = float(pipe.cfg["model_params"]["Headpose"]["sigma"]) if sigma_scale is None else sigma_scale
        self.features, self.pairs = FeatureStream(pipe.encoder), PairBuffer()
        self.mouth = MouthStream(pipe.mouth)
        self.pose = PoseStream(pipe.headpose, seed, scale) if poses is None else None
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
        from util.geometry import project, project_landmarks, shoulder_points

        a, gain = self.pipe.assets, float(self.pipe.cfg["model_params"]["Headpose"]["shoulder_AMP"])
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
                             self.pose.finish(self.pairs, n) if self.pose is not None else None)
        return _join(first, last), n


def _join(a: FrameBatch | None, b: FrameBatch | None) -> FrameBatch | None:
    batches = [x for x in (a, b) if x is not None]
    return FrameBatch.concat(batches) if batches else None


DEFAULT_HOP_MS = 50.0  # a live session runs its audio side at most this often (see StreamingSession)


@dataclass
class RenderedFrame:
    """One output frame of a live session."""

    index: int  # model-frame index (frame t covers audio [t / fps, (t + 1) / fps))
    rgb: np.ndarray  # (H, W, 3) uint8
    feature_map: np.ndarray  # (H, W) uint8
    landmarks: FrameBatch  # this frame's audio-side results (a batch of one)
    dropped: bool = False  # not rendered in time (StreamingSession max_lag_ms): rgb repeats the previous frame


class StreamingSession:
    """Audio in (chunks of any size), rendered frames out as soon as the models' lookahead allows.

    Args:
        frame_step: render every n-th model frame (e.g. 2 gives 30 fps from a 60 fps model), for
            devices that cannot render at the model rate in real time.
        batch_size: frames per renderer call; frames wait until a batch is full, except at the end.
        hop_ms: the audio side runs once this much new audio has come (smaller chunks wait). Each run
            has a fixed cost (the manifold search reads the whole feature database, the recurrent
            networks' weights are read again), so a 10 ms cadence would cost far more than the audio
            it adds; a hop of 50 ms adds at most 50 ms of latency. The frames do not depend on it.
        max_lag_ms: keep a live session live on a device that cannot render every frame in time: a
            frame that is already this late (beyond the models' own lookahead, counted from the live
            arrival of its audio, which starts with the first push) is not rendered when a newer frame
            is waiting; it comes out marked `dropped`, carrying the previous image, so a video written
            from every frame stays in sync with the audio. None never drops.
    """

    def __init__(self, pipe, seed: int = 0, sigma_scale: float | None = None, batch_size: int = 1,  # noqa: ANN001
                 frame_step: int = 1, poses: tuple[np.ndarray, np.ndarray] | None = None,
                 hop_ms: float = DEFAULT_HOP_MS,
                 renderer=None, max_lag_ms: float | None = None) -> None:  # noqa: ANN001 - a FaceRenderer
        self.pipe, self.batch_size, self.frame_step = pipe, batch_size, frame_step
        self.max_lag = None if max_lag_ms is None else max_lag_ms / 1000
        self.lookahead = max(pipe.mouth.frame_future + pipe.mouth.smooth_lookahead, pipe.headpose.frame_future)
        self.start: float | None = None  # live clock: when sample 0 arrived
        self.last: RenderedFrame | None = None
        self.renderer = pipe.renderer if renderer is None else renderer
        self.renderer.warm_up(batch_size)  # first-call costs (compilers, runtimes) before any frame is due
        self.audio = AudioSideStream(pipe, seed, sigma_scale, poses)
        self.queue: list[FrameBatch] = []
        self.hop = max(1, round(hop_ms / 1000 * pipe.sample_rate))
        self.pending: list[np.ndarray] = []
        self.pending_samples = 0

    def _render(self, batch: FrameBatch | None, flush: bool) -> list[RenderedFrame]:
        if batch is not None:
            keep = [i for i in range(len(batch)) if (batch.start + i) % self.frame_step == 0]
            self.queue += [batch.rows(i, i + 1) for i in keep]
        out = []
        while self.queue and (flush or len(self.queue) >= self.batch_size):
            while self.last is not None and len(self.queue) > 1 and self._late(self.queue[0].start):
                b = self.queue.pop(0)
                out.append(RenderedFrame(b.start, self.last.rgb, self.last.feature_map, b, dropped=True))
            todo, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
            maps = self.renderer.feature_maps(np.concatenate([b.face2d for b in todo]),
                                              np.concatenate([b.shoulders2d for b in todo]))
            frames = self.renderer(maps)
            out += [RenderedFrame(b.start, f, m, b) for b, f, m in zip(todo, frames, maps)]
            self.last = out[-1]
        return out

    def _late(self, index: int) -> bool:
        """Whether frame `index` is already more than max_lag behind the live clock."""
        if self.max_lag is None or self.start is None:
            return False
        ready = self.start + (index + 1 + self.lookahead) / self.pipe.fps  # its audio and lookahead arrived
        return time.perf_counter() - ready > self.max_lag

    def push(self, samples: np.ndarray) -> list[RenderedFrame]:
        """Add audio (16 kHz mono float, any length) as it arrives; returns the frames rendered from it."""
        if self.start is None:  # the first chunk has just arrived: its first sample came its length ago
            self.start = time.perf_counter() - np.size(samples) / self.pipe.sample_rate
        self.pending.append(np.asarray(samples, dtype=np.float32).reshape(-1))
        self.pending_samples += self.pending[-1].size
        if self.pending_samples < self.hop:
            return []
        with self._audio_threads():
            batch = self.audio.push(self._take())
        return self._render(batch, flush=self.batch_size == 1)

    @contextmanager
    def _audio_threads(self) -> Iterator[None]:
        """One torch thread for the audio side on a CPU: its per-hop calls are too small to share, and
        a second thread left spinning slows the renderer down (measured: the whole live loop 25% faster
        on 2 cores). The renderer keeps torch's thread count."""
        old = torch.get_num_threads()
        if self.pipe.encoder.device.type != "cpu" or old == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def _take(self) -> np.ndarray:
        audio = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending, self.pending_samples = [], 0
        return audio

    def finish(self) -> list[RenderedFrame]:
        """Flush: the audio so far is the whole utterance; every remaining frame is rendered."""
        with self._audio_threads():
            first = self.audio.push(self._take()) if self.pending else None
            batch, _ = self.audio.finish()
        return self._render(_join(first, batch), flush=True)



@dataclass
class StreamStats:
    """Latency from the arrival of a frame's own audio to the frame being ready, and throughput."""

    latencies_ms: list[float]
    frames: int  # rendered
    audio_seconds: float
    wall_seconds: float
    dropped: int = 0  # skipped to stay live (StreamingSession max_lag_ms)

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.full(1, np.nan)
        return {"stream_latency_ms_p50": float(np.percentile(lat, 50)),
                "stream_latency_ms_p95": float(np.percentile(lat, 95)),
                "stream_fps": self.frames / self.wall_seconds,
                "real_time_factor": self.wall_seconds / self.audio_seconds,
                "stream_dropped_frames": float(self.dropped)}


def paced_chunks(audio: np.ndarray, chunk_seconds: float, sample_rate: int, paced: bool = True):  # noqa: ANN201
    """Chunks of `audio`, each yielded no earlier than it would have arrived live (when `paced`)."""
    step = max(1, round(chunk_seconds * sample_rate))
    start = time.perf_counter()
    for i in range(0, len(audio), step):
        chunk = audio[i : i + step]
        wait = (i + len(chunk)) / sample_rate - (time.perf_counter() - start)
        if paced and wait > 0:
            time.sleep(wait)
        yield chunk


def run_live(session: StreamingSession, chunks, sample_rate: int, on_frame=None) -> StreamStats:  # noqa: ANN001
    """Push every chunk of a live source (paced_chunks, a microphone) as it comes, call on_frame(frame)
    for each rendered frame, and measure each frame's latency: from the moment the last sample of the
    frame's own audio arrived live (the source delivers sample k at start + k / sample_rate, whether or
    not we were ready to read it) to the frame being ready. A session slower than real time thus shows
    a growing latency instead of hiding it."""
    fps = session.pipe.fps
    latencies: list[float] = []
    frames, received, dropped = 0, 0, 0
    start = time.perf_counter()

    def handle(out: list[RenderedFrame]) -> None:
        nonlocal frames, dropped
        now = time.perf_counter()
        for f in out:
            if f.dropped:
                dropped += 1
            else:
                need = min((f.index + 1) / fps * sample_rate, received)  # samples of the frame's own audio
                latencies.append(1000 * (now - start - need / sample_rate))
                frames += 1
            if on_frame is not None:
                on_frame(f)

    for chunk in chunks:
        received += len(chunk)
        handle(session.push(chunk))
    handle(session.finish())
    return StreamStats(latencies, frames, received / sample_rate, time.perf_counter() - start, dropped)
