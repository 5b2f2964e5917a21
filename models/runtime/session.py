"""A live session: audio chunks in, rendered frames out as soon as the models' lookahead allows, with
frame skipping so a session that cannot render every frame in time stays live; and its latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.runtime.streams import AudioSideStream, FrameBatch, join_batches

if TYPE_CHECKING:
    from models.runtime.pipeline import PortraitPipeline
    from models.runtime.renderer import FaceRenderer

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

    def __init__(self, pipe: PortraitPipeline, seed: int = 0, sigma_scale: float | None = None, batch_size: int = 1,
                 frame_step: int = 1, poses: tuple[np.ndarray, np.ndarray] | None = None,
                 hop_ms: float = DEFAULT_HOP_MS, renderer: FaceRenderer | None = None,
                 max_lag_ms: float | None = None) -> None:
        self.pipe, self.batch_size, self.frame_step = pipe, batch_size, frame_step
        self.max_lag = None if max_lag_ms is None else max_lag_ms / 1000
        self.lookahead = pipe.settings.lookahead
        self.start: float | None = None  # live clock: when sample 0 arrived
        self.last: RenderedFrame | None = None
        self.renderer = pipe.renderer if renderer is None else renderer
        self.renderer.warm_up(batch_size)  # first-call costs (compilers, runtimes) before any frame is due
        self.audio = AudioSideStream(pipe.audio_side, seed, sigma_scale, poses)
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
        if self.pipe.audio_side.device.type != "cpu" or old == 1:
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
        return self._render(join_batches(first, batch), flush=True)


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


def paced_chunks(audio: np.ndarray, chunk_seconds: float, sample_rate: int,
                 paced: bool = True) -> Iterator[np.ndarray]:
    """Chunks of `audio` as a live source delivers them (when `paced`): a chunk no earlier than its last
    sample would have arrived, and a reader that fell behind gets everything that has arrived since, in
    one piece, as from a microphone's buffer. (One chunk per read would let a slow session render a frame
    per chunk and fall further behind instead of skipping the frames that are already late.)"""
    step = max(1, round(chunk_seconds * sample_rate))
    start, i = time.perf_counter(), 0
    while i < len(audio):
        j = min(len(audio), i + step)
        if paced:
            wait = j / sample_rate - (time.perf_counter() - start)
            if wait > 0:
                time.sleep(wait)
            arrived = int((time.perf_counter() - start) * sample_rate) // step * step
            j = max(j, min(len(audio), arrived))
        yield audio[i:j]
        i = j


def run_live(session: StreamingSession, chunks: Iterable[np.ndarray], sample_rate: int,
             on_frame: Callable[[RenderedFrame], None] | None = None) -> StreamStats:
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
