"""aiortc media: the microphone coming in, the portrait's video and delayed speech going out.

Each video frame carries its sequence number in a strip of black and white blocks below the picture
(CODE_ROWS rows after CODE_GAP black ones that keep compression from bleeding it into the picture;
both hidden by the page): the page reads it back from the displayed frame to know exactly
which frame is on screen, whatever the browser dropped or repeated. Frames smaller than MIN_SIDE are
scaled up (nearest neighbour) first: browsers and VP8 handle tiny videos badly.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger("lsp")
CODE_ROWS = 16  # height of the code strip (one VP8 macroblock row: it survives compression)
CODE_GAP = 16  # black rows between the picture and the strip
CODE_BITS = 16  # blocks across the strip: SEQ_BITS of sequence number + a 4-bit check
SEQ_BITS = 12
MIN_SIDE = 256  # smaller frames are scaled up to at least this
VIDEO_CLOCK = 90000  # RTP video clock
AUDIO_PREFETCH = 1  # packets aiortc's audio jitter buffer holds before decoding (its default 4 adds 60 ms)
ARRIVALS_KEPT = 512  # packet arrival times remembered per receiver
ENCODE_SMOOTHING = 0.1  # weight of the newest frame in the running mean of the video encoding time
MAX_ENCODE_LEAD = 0.05  # seconds: longer gaps are not encoding


def code_value(seq: int) -> int:
    """The 16-bit value drawn for frame `seq`: its low 12 bits and a 4-bit check of them."""
    s = seq & ((1 << SEQ_BITS) - 1)
    return s | (((s ^ (s >> 4) ^ (s >> 8)) & 0xF) << SEQ_BITS)


def read_code(strip: np.ndarray) -> int | None:
    """The sequence number (low 12 bits) from a decoded strip (CODE_ROWS, W[, 3]); None if the check fails.
    The page does the same in app.js (readCode)."""
    gray = strip.mean(axis=2) if strip.ndim == 3 else strip
    block = gray.shape[1] // CODE_BITS
    value = sum(1 << b for b in range(CODE_BITS) if gray[4:-4, b * block + block // 4 : (b + 1) * block - block // 4]
                .mean() > 127)
    seq = value & ((1 << SEQ_BITS) - 1)
    return seq if code_value(seq) == value else None


def output_scale(size: tuple[int, int]) -> int:
    """Integer upscale for a rendered (H, W) frame so that its shorter side reaches MIN_SIDE."""
    return max(1, math.ceil(MIN_SIDE / min(size)))


def layout(size: tuple[int, int], scale: int) -> dict[str, int]:
    """Where the page finds things in a sent frame: picture height (`top`) and width, code strip rows and
    bits, full frame height."""
    top, width = size[0] * scale, size[1] * scale
    strip = top + CODE_GAP
    return {"top": top, "strip": strip, "width": width, "height": strip + CODE_ROWS + (strip + CODE_ROWS) % 2,
            "rows": CODE_ROWS, "bits": CODE_BITS, "seq_bits": SEQ_BITS}


def compose(rgb: np.ndarray, seq: int, scale: int) -> np.ndarray:
    """The sent image: `rgb` (H, W, 3) scaled by `scale`, with the code strip of `seq` below (see layout)."""
    img = np.repeat(np.repeat(rgb, scale, 0), scale, 1) if scale > 1 else rgb
    h, w = img.shape[:2]
    strip = h + CODE_GAP
    out = np.zeros((strip + CODE_ROWS + (strip + CODE_ROWS) % 2, w + w % 2, 3), np.uint8)
    out[:h, :w] = img
    block, value = w // CODE_BITS, code_value(seq)
    for b in range(CODE_BITS):
        if value >> b & 1:
            out[strip : strip + CODE_ROWS, b * block : (b + 1) * block] = 255
    return out


class VideoOut(MediaStreamTrack):
    """The portrait: frames from `next_frame()` -> (RGB image, seconds on the output timeline)."""

    kind = "video"

    def __init__(self, next_frame: Callable[[], Awaitable[tuple[np.ndarray, float]]]) -> None:
        super().__init__()
        self.next_frame, self.last_pts = next_frame, -1
        self.encode_s = 0.0  # running mean of the time aiortc takes to encode and send a frame
        self.returned: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.returned is not None:  # aiortc asks again once it has encoded and sent the last frame
            spent = min(time.perf_counter() - self.returned, MAX_ENCODE_LEAD)
            self.encode_s += ENCODE_SMOOTHING * (spent - self.encode_s)
        image, seconds = await self.next_frame()
        self.returned = time.perf_counter()
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        self.last_pts = frame.pts = max(round(seconds * VIDEO_CLOCK), self.last_pts + 1)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class AudioOut(MediaStreamTrack):
    """The speech, delayed: packets from `next_packet()` -> (float samples, timeline position in samples)."""

    kind = "audio"

    def __init__(self, next_packet: Callable[[], Awaitable[tuple[np.ndarray, int]]], sample_rate: int) -> None:
        super().__init__()
        self.next_packet, self.rate = next_packet, sample_rate

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        samples, pts = await self.next_packet()
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = self.rate, pts, fractions.Fraction(1, self.rate)
        return frame


class ReceiverTap:
    """The wire RTP timestamp and arrival time of every packet an aiortc audio receiver gets.

    aiortc hands decoded frames on with pts counted from the first packet and keeps when packets
    arrived to itself; the page's latency measurement needs both (the page knows when it captured each
    RTP timestamp). We wrap the receiver's packet handler, and shorten its audio jitter-buffer prefetch
    from 4 packets to AUDIO_PREFETCH (loopback and LAN packets come in order; 60 ms less latency).
    Both touch aiortc internals (pinned in requirements.txt); without them the server still works,
    with arrival times taken at decoding and no browser capture times.
    """

    def __init__(self, receiver: object, clock: Callable[[], float] = time.perf_counter) -> None:
        self.first: int | None = None
        self.arrivals: OrderedDict[int, float] = OrderedDict()
        self.clock = clock
        handler = getattr(receiver, "_handle_rtp_packet", None)
        if handler is None:
            log.warning("aiortc without RTCRtpReceiver._handle_rtp_packet: no capture times for the page")
            return

        async def tapped(packet: object, arrival_time_ms: int) -> None:
            self._seen(packet.timestamp)
            await handler(packet, arrival_time_ms)

        receiver._handle_rtp_packet = tapped
        if hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=AUDIO_PREFETCH)

    def _seen(self, ts: int) -> None:
        if self.first is None:
            self.first = ts
        self.arrivals.setdefault(ts, self.clock())
        while len(self.arrivals) > ARRIVALS_KEPT:
            self.arrivals.popitem(last=False)

    def wire(self, pts: int) -> int | None:
        """The RTP timestamp of a decoded frame's first sample (aiortc counts pts from the first packet)."""
        return None if self.first is None else (self.first + pts) & 0xFFFFFFFF

    def arrival(self, ts: int | None) -> float | None:
        return None if ts is None else self.arrivals.get(ts)


async def read_microphone(track: MediaStreamTrack, tap: ReceiverTap | None, sample_rate: int,
                          deliver: Callable[[np.ndarray, float, int | None, int], None]) -> None:
    """Decode the browser's audio track to `sample_rate` mono float and call deliver(samples, arrival,
    RTP timestamp of the first sample, RTP clock rate) for each packet, silence filling any gap, until
    the track ends."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    expected: int | None = None
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.perf_counter()
        rate = frame.sample_rate
        if expected is not None and frame.pts > expected:  # lost or concealed packets: keep the timeline
            gap = round((frame.pts - expected) * sample_rate / rate)
            deliver(np.zeros(gap, np.float32), now, tap.wire(expected) if tap else None, rate)
        expected = frame.pts + frame.samples
        wire = tap.wire(frame.pts) if tap else None
        arrival = (tap.arrival(wire) if tap else None) or now
        out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        if out:
            deliver(np.concatenate(out).astype(np.float32), arrival, wire, rate)


async def feed_file(audio: np.ndarray, sample_rate: int, deliver: Callable[[np.ndarray, float], None],
                    chunk_seconds: float = 0.02) -> None:
    """Hand `audio` over in chunks, each no earlier than it would have been spoken (as from a microphone)."""
    step = max(1, round(chunk_seconds * sample_rate))
    start = time.perf_counter()
    for i in range(0, len(audio), step):
        chunk = audio[i : i + step]
        wait = start + (i + len(chunk)) / sample_rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        deliver(chunk, time.perf_counter())
