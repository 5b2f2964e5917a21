"""One viewer: a WebRTC peer connection, its StreamingSession (in a worker thread) and its playout.

    browser mic ─RTP─► read_microphone ─► Playout (delay line) ─────────────► AudioOut ─RTP─► browser
                                     └──► SessionWorker: StreamingSession ─► Playout ─► VideoOut ─RTP─► browser
                                                         (audio side here, frames via the shared renderer)
A data channel carries, per sent frame, what the page needs to measure glass-to-glass latency, and
the page's heartbeat: a viewer that goes silent is dropped after `idle_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from models.live.playout import OutFrame, Playout
from models.live.tracks import AudioOut, ReceiverTap, VideoOut, compose, feed_file, layout, read_microphone

log = logging.getLogger("lsp")
LEVEL_SECONDS = 10.0  # recent input audio kept by a worker to measure each frame's audio level
LATENCIES_KEPT = 1800  # per-frame server latencies kept for the statistics (a minute at 30 fps)
CONNECT_TIMEOUT = 20.0  # seconds for the data channel to open
LATE_SECONDS = 0.005  # a frame sent this much after its due time counts as late (out of sync by that much)
_FINISH, _STOP = object(), object()


class SessionWorker:
    """A StreamingSession in its own thread. Audio is fed as it arrives; each turn pushes everything that
    has come since the last one in one call, so a session that fell behind (a slow renderer) sees its
    whole backlog at once and skips the frames it can no longer render in time instead of lagging more."""

    def __init__(self, session: object, fps: float, sample_rate: int, scale: int,
                 deliver: Callable[[list[OutFrame], bool], None], fail: Callable[[str], None], name: str) -> None:
        self.session, self.fps, self.sr, self.scale = session, fps, sample_rate, scale
        self.deliver, self.fail = deliver, fail
        self.inbox: queue.Queue = queue.Queue()
        self.seq = self.skipped = self.pending_skips = 0
        self.recent, self.recent_start = np.zeros(0, np.float32), 0  # the last LEVEL_SECONDS of input
        self.thread = threading.Thread(target=self._run, name=f"lsp-session-{name}", daemon=True)
        self.thread.start()

    def feed(self, samples: np.ndarray) -> None:
        self.inbox.put(samples)

    def finish(self) -> None:
        """The audio has ended: flush the remaining frames."""
        self.inbox.put(_FINISH)

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (blocks until it has, at most `timeout` seconds)."""
        self.inbox.put(_STOP)
        self.thread.join(timeout)

    def _take(self) -> tuple[list[np.ndarray], object | None]:
        items, signal = [self.inbox.get()], None
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        chunks = [x for x in items if isinstance(x, np.ndarray)]
        for marker in (_STOP, _FINISH):
            if any(x is marker for x in items):
                signal = signal or marker
        return chunks, signal

    def _run(self) -> None:
        session, self.session = self.session, None  # this thread holds the only reference: freed when it ends
        try:
            while True:
                chunks, signal = self._take()
                if chunks and signal is not _STOP:
                    audio = np.concatenate(chunks)
                    self._remember(audio)
                    self.deliver(self._frames(session.push(audio)), False)
                if signal is _FINISH:
                    self.deliver(self._frames(session.finish()), True)
                    while self.inbox.get() is not _STOP:  # nothing more to do until the viewer leaves
                        pass
                    return
                if signal is _STOP:
                    return
        except Exception as err:  # the viewer gets the message; the server and other sessions go on
            log.exception("live session failed")
            self.fail(f"the session failed: {type(err).__name__}: {err}")
        finally:
            del session

    def _remember(self, audio: np.ndarray) -> None:
        self.recent = np.concatenate([self.recent, audio])
        extra = len(self.recent) - int(LEVEL_SECONDS * self.sr)
        if extra > 0:
            self.recent, self.recent_start = self.recent[extra:], self.recent_start + extra

    def _level(self, start: int, end: int) -> float:
        window = self.recent[max(0, start - self.recent_start) : max(0, end - self.recent_start)]
        return float(np.sqrt(np.mean(window**2))) if len(window) else 0.0

    def _frames(self, rendered: list) -> list[OutFrame]:
        now, out = time.perf_counter(), []
        for f in rendered:
            if f.dropped:
                self.skipped += 1
                self.pending_skips += 1
                continue
            start, end = round(f.index * self.sr / self.fps), round((f.index + 1) * self.sr / self.fps)
            out.append(OutFrame(self.seq, f.index, compose(f.rgb, self.seq, self.scale), start, end, now,
                                self.pending_skips, self._level(start, end)))
            self.seq, self.pending_skips = self.seq + 1, 0
        return out


@dataclass(frozen=True)
class SessionPlan:
    """The fixed facts of one viewer's session."""

    identity: str
    fps: float  # model frame rate
    sample_rate: int
    frame_step: int
    scale: int  # upscale of the rendered frames (tracks.output_scale)
    image_size: tuple[int, int]  # rendered (H, W)
    delay: float  # first playout delay, seconds (Playout)
    max_delay: float
    idle_timeout: float  # seconds without a word from the page before the session is dropped


@dataclass
class ConnectionStats:
    """What /api/stats reports for a session."""

    frames: int = 0
    late: int = 0  # frames sent after their due time
    page: dict | None = None  # the page's own figures (glass-to-glass latency, frames/s, A/V offset)

    def __post_init__(self) -> None:
        self.server_ms: deque[float] = deque(maxlen=LATENCIES_KEPT)


class LiveConnection:
    """A viewer's session; `answer()` it, and `close()` it (idempotent) when it ends."""

    def __init__(self, sid: str, plan: SessionPlan, session: object, audio: np.ndarray | None,
                 on_closed: Callable[[LiveConnection], None]) -> None:
        self.sid, self.plan, self.identity, self.on_closed = sid, plan, plan.identity, on_closed
        self.source, self.file_audio = ("file", audio) if audio is not None else ("mic", None)
        self.sr = plan.sample_rate
        self.loop = asyncio.get_running_loop()
        self.epoch = time.time() - time.perf_counter()  # perf_counter -> Unix time, for the page
        self.started = time.perf_counter()
        self.playout = Playout(self.sr, plan.delay, plan.max_delay)
        self.changed = {"audio": asyncio.Event(), "video": asyncio.Event()}
        self.pc = RTCPeerConnection()
        self.channel = None
        self.tasks: list[asyncio.Task] = []
        self.closed = self.flushed = self.end_sent = False
        self.last_heard = time.perf_counter()
        self.stats = ConnectionStats()
        self.worker = SessionWorker(session, plan.fps, self.sr, plan.scale, self._from_worker,
                                    lambda msg: self.loop.call_soon_threadsafe(self._failed, msg), sid[:8])

    # signalling ---------------------------------------------------------------------------------------
    async def answer(self, sdp: str, kind: str) -> dict[str, str]:
        """Apply the browser's offer; returns the answer (all candidates included)."""
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("connectionstatechange", self._on_state)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        self.video = VideoOut(self._next_video)
        self.pc.addTrack(self.video)
        self.pc.addTrack(AudioOut(self._next_audio, self.sr))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._spawn(self._watchdog())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    def _spawn(self, coro: Coroutine) -> None:
        """Run `coro` as a task this connection holds (and cancels when it closes)."""
        self.tasks = [t for t in self.tasks if not t.done()]
        self.tasks.append(asyncio.ensure_future(coro))

    def _on_track(self, track: object) -> None:
        if track.kind != "audio" or self.source != "mic":
            return
        receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        tap = ReceiverTap(receiver) if receiver is not None else None
        self._spawn(read_microphone(track, tap, self.sr, self._audio_in))

    def _on_channel(self, channel: object) -> None:
        self.channel = channel
        channel.on("message", self._on_message)
        self._send({"type": "hello", "session": self.sid, "fps": self.plan.fps / self.plan.frame_step,
                    "source": self.source, "code": layout(self.plan.image_size, self.plan.scale)})
        if self.source == "file":
            self._spawn(self._play_file())

    async def _play_file(self) -> None:
        await feed_file(self.file_audio, self.sr, lambda chunk, arrival: self._audio_in(chunk, arrival, None, 0))
        self.playout.ended = True
        self.worker.finish()
        self._wake()

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._spawn(self.close(f"connection {self.pc.connectionState}"))

    def _on_message(self, message: object) -> None:
        self.last_heard = time.perf_counter()
        try:
            msg = json.loads(message) if isinstance(message, str) else {}
        except json.JSONDecodeError:
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "ping":
            self._send({"type": "pong", "t": msg.get("t"), "srv": time.time() * 1000})
        elif kind == "report" and isinstance(msg.get("figures"), dict):
            self.stats.page = {k: v for k, v in msg["figures"].items() if isinstance(v, (int, float, type(None)))}
        elif kind == "bye":
            self._spawn(self.close("stopped by the viewer"))

    def _send(self, msg: dict) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(msg))

    async def _watchdog(self) -> None:
        while not self.closed:
            await asyncio.sleep(0.5)
            if self.flushed and not self.end_sent and not self.playout.frames and not len(self.playout.buffer):
                self.end_sent = True  # a file has been spoken to its end: every frame and sample has gone
                self._send({"type": "end"})
            quiet = time.perf_counter() - self.last_heard
            limit = self.plan.idle_timeout if self.channel is not None else max(self.plan.idle_timeout, CONNECT_TIMEOUT)
            if quiet > limit:
                await self.close(f"no word from the viewer for {quiet:.0f} s")

    # media in -----------------------------------------------------------------------------------------
    def _audio_in(self, samples: np.ndarray, arrival: float, stamp: int | None, rate: int) -> None:
        if self.closed:
            return
        self.playout.add_audio(samples, arrival, stamp, rate)
        self.worker.feed(samples)
        self.changed["audio"].set()

    def _from_worker(self, frames: list[OutFrame], final: bool) -> None:
        self.loop.call_soon_threadsafe(self._frames_in, frames, final)

    def _frames_in(self, frames: list[OutFrame], final: bool) -> None:
        for f in frames:
            self.playout.add_frame(f)
        self.flushed = self.flushed or final
        self._wake()

    def _wake(self) -> None:
        for event in self.changed.values():
            event.set()

    def _failed(self, message: str) -> None:
        self._send({"type": "error", "message": message})
        self._spawn(self.close(message))

    # media out ----------------------------------------------------------------------------------------
    async def _wait(self, kind: str, until: float | None) -> None:
        """Until something changes for `kind` or the clock reaches `until`."""
        event = self.changed[kind]
        event.clear()
        timeout = None if until is None else max(0.0, until - time.perf_counter())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _next_audio(self) -> tuple[np.ndarray, int]:
        while not self.closed:
            due, packet = self.playout.next_audio()
            if packet is None:
                await self._wait("audio", None)
            elif due > time.perf_counter():
                await self._wait("audio", due)
                if time.perf_counter() >= due:
                    return packet, self.playout.audio_sent(due)
            else:
                return packet, self.playout.audio_sent(time.perf_counter())
        raise MediaStreamError

    async def _next_video(self) -> tuple[np.ndarray, float]:
        while not self.closed:
            due = self.playout.next_frame_due()
            if due is not None:  # hand it to the encoder early by its encoding time: it leaves with its sound
                due -= self.video.encode_s
            if due is None:
                await self._wait("video", None)
            elif due > time.perf_counter():
                await self._wait("video", due)
            else:
                return self._released()
        raise MediaStreamError

    def _released(self) -> tuple[np.ndarray, float]:
        rel = self.playout.release_frame()
        f, server_ms = rel.frame, 1000 * (rel.sent - rel.end_arrival)
        self.stats.frames += 1
        self.stats.late += rel.late > LATE_SECONDS
        self.stats.server_ms.append(server_ms)
        self._send({"type": "frame", "seq": f.seq, "index": f.index, "ts": self.playout.stamp(f.end - 1),
                    "arr": round(1000 * (self.epoch + rel.end_arrival), 1), "srv": round(server_ms, 1),
                    "skip": self.worker.skipped, "late": round(1000 * rel.late, 1),
                    "lvl": round(f.level, 4)})
        return f.image, rel.pts_seconds

    # end ----------------------------------------------------------------------------------------------
    async def close(self, reason: str) -> None:
        """Stop everything this viewer holds: tracks, peer connection, worker thread (idempotent)."""
        if self.closed:
            return
        self.closed = True
        log.info("session %s (%s, %s) ends: %s", self.sid[:8], self.identity, self.source, reason)
        self._wake()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self.loop.run_in_executor(None, self.worker.stop)
        await self.pc.close()
        self.on_closed(self)

    def summary(self) -> dict:
        """This session's figures for /api/stats."""
        ms = np.asarray(self.stats.server_ms) if self.stats.server_ms else np.full(1, np.nan)
        p = self.playout
        return {"id": self.sid[:8], "identity": self.identity, "source": self.source,
                "seconds": round(time.perf_counter() - self.started, 1), "frames": self.stats.frames,
                "skipped": self.worker.skipped, "late": self.stats.late,
                "server_latency_ms_p50": _round(np.percentile(ms, 50)),
                "server_latency_ms_p95": _round(np.percentile(ms, 95)), "delay_ms": round(1000 * p.delay, 1),
                "silence_packets": p.inserted, "dropped_quiet_packets": p.dropped, "page": self.stats.page}


def _round(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 1)
