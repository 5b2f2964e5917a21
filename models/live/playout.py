"""When the portrait's audio and video leave the server: one clock for both, so lips and sound stay together.

The audio a session receives is its content timeline (sample c of the speech). Packets arrive with
network and scheduling jitter; the earliest-arrival line through the recent packets, due(c) =
min_i(arrival_i - end_i / rate) + c / rate, is the sender's own clock as seen here. Sample c goes back
out at due(c) + delay, and the video frame made from the audio window [a, b) at due(a) + delay too:
both outputs are evenly paced (the browser's jitter buffers stay small) and follow the sender's clock
(the min is over the last CLOCK_WINDOW seconds), so the browser's audio clock and ours cannot drift
apart over a long session, and a frame leaves together with its sound whenever it is ready in time.

The delay is the session's glass-to-glass budget minus the transport: the time from a window's first
sample arriving to its frame being ready (models' lookahead + audio-side cadence + render time). It
starts from an estimate and follows the 95th percentile of what is measured: it grows at once when
frames come late (the audio gets a few packets of silence, so its timeline stays continuous) and
shrinks only during silence (quiet packets are dropped), so speech is never cut.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PACKET_SECONDS = 0.02  # one output audio packet (WebRTC's usual 20 ms)
ADAPT_QUANTILE = 95.0  # the delay covers this percentile of the measured readiness
ADAPT_WINDOW = 90  # recent frames the percentile is taken over (3 s at 30 fps)
ADAPT_MIN_FRAMES = 8  # frames measured before the delay adapts
MARGIN_SECONDS = 0.01  # headroom above the percentile
SHRINK_SLACK_PACKETS = 1  # shrink only when the delay is this many packets above what is needed
QUIET_RMS = 0.01  # a packet this quiet may be dropped to shrink the delay (about -40 dBFS)
ARRIVALS_KEPT = 3000  # received chunks remembered (60 s of 20 ms packets)
CLOCK_WINDOW = 10.0  # seconds of arrivals the earliest-arrival line is taken over


@dataclass
class OutFrame:
    """A rendered frame waiting to be sent."""

    seq: int  # the number drawn into the frame's code strip
    index: int  # model frame index
    image: np.ndarray  # (H, W, 3) uint8 as sent (scaled, code strip included)
    start: int  # content samples of its audio window [start, end)
    end: int
    ready: float  # clock time it was ready
    skipped: int = 0  # frames the session skipped just before this one (max_lag_ms)
    level: float = 0.0  # RMS of its audio window


@dataclass
class Released:
    """A frame leaving now, with what the page needs to measure it."""

    frame: OutFrame
    pts_seconds: float  # on the output timeline (shared with the audio)
    sent: float  # clock time
    end_arrival: float  # arrival time of the last sample of its audio window
    late: float  # seconds after its due time (0 when on time)


class Playout:
    """Audio and video release times of one session (see the module docstring). Not thread-safe: the
    server calls it from its event loop only."""

    def __init__(self, sample_rate: int, delay: float, max_delay: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.sr, self.clock = sample_rate, clock
        self.packet = round(PACKET_SECONDS * sample_rate)
        self.delay, self.max_delay = min(delay, max_delay), max_delay
        self.starts: list[int] = []  # content start of each received chunk
        self.ends: list[int] = []  # its content end
        self.arrivals: list[float] = []  # its arrival time
        self.stamps: list[int | None] = []  # the RTP timestamp of its first sample in the sender's clock, if known
        self.stamp_rate = sample_rate  # that clock's rate
        self.line: deque[tuple[float, float]] = deque()  # (arrival, arrival - end / rate), increasing offsets
        self.buffer = np.zeros(0, np.float32)  # received audio not yet sent, from content position `sent`
        self.sent = 0  # content position of the next audio sample out
        self.out = 0  # samples on the output timeline so far (content + silence inserted - dropped)
        self.silence_due = 0  # samples of silence to send before the next real packet
        self.last_release: float | None = None
        self.frames: deque[OutFrame] = deque()
        self.readiness: deque[float] = deque(maxlen=ADAPT_WINDOW)
        self.ended = False
        self.inserted = self.dropped = 0  # packets, for the statistics

    @property
    def received(self) -> int:
        return self.ends[-1] if self.ends else 0

    def add_audio(self, samples: np.ndarray, arrival: float, stamp: int | None = None, stamp_rate: int = 0) -> None:
        """Audio that has just arrived (16 kHz mono float), the next part of the content timeline; `stamp`
        is the sender's RTP timestamp of its first sample, in a clock of `stamp_rate` Hz."""
        if len(samples) == 0:
            return
        self.buffer = np.concatenate([self.buffer, samples.astype(np.float32)])
        self.starts.append(self.received)
        self.ends.append(self.received + len(samples))
        self.arrivals.append(arrival)
        self.stamps.append(stamp)
        self.stamp_rate = stamp_rate or self.stamp_rate
        offset = arrival - self.received / self.sr  # a monotonic deque: its first entry is the window's minimum
        while self.line and self.line[-1][1] >= offset:
            self.line.pop()
        self.line.append((arrival, offset))
        while self.line[0][0] < arrival - CLOCK_WINDOW:
            self.line.popleft()
        if len(self.ends) > ARRIVALS_KEPT:
            for kept in (self.starts, self.ends, self.arrivals, self.stamps):
                del kept[: ARRIVALS_KEPT // 2]

    def stamp(self, c: int) -> int | None:
        """The sender's RTP timestamp of content sample c (None when the source has none)."""
        i = min(bisect.bisect_right(self.ends, c), len(self.ends) - 1)
        if self.stamps[i] is None:
            return None
        return (self.stamps[i] + round((c - self.starts[i]) * self.stamp_rate / self.sr)) & 0xFFFFFFFF

    def due(self, c: int) -> float:
        """When content sample c would have arrived without jitter (the earliest-arrival line)."""
        return self.line[0][1] + c / self.sr

    def arrival(self, c: int) -> float:
        """When content sample c arrived (the chunk holding it; the oldest remembered one if forgotten)."""
        i = bisect.bisect_right(self.ends, c)
        return self.arrivals[min(i, len(self.arrivals) - 1)]

    def add_frame(self, frame: OutFrame) -> None:
        """A rendered frame; its readiness (ready minus due time of its window's start) steers the delay."""
        self.readiness.append(frame.ready - self.due(frame.start))
        self.frames.append(frame)
        if len(self.readiness) >= ADAPT_MIN_FRAMES:
            self._grow(float(np.percentile(self.readiness, ADAPT_QUANTILE)) + MARGIN_SECONDS)

    def needed_delay(self) -> float | None:
        """The delay the recent frames need, or None before enough were measured."""
        if len(self.readiness) < ADAPT_MIN_FRAMES:
            return None
        return min(self.max_delay, float(np.percentile(self.readiness, ADAPT_QUANTILE)) + MARGIN_SECONDS)

    def _grow(self, target: float) -> None:
        target = min(target, self.max_delay)
        if target <= self.delay:
            return
        packets = int(np.ceil((target - self.delay) * self.sr / self.packet))
        self.silence_due += packets * self.packet
        self.delay += packets * self.packet / self.sr
        self.inserted += packets

    # audio out ---------------------------------------------------------------------------------------
    def next_audio(self) -> tuple[float, np.ndarray | None]:
        """(release time, packet) of the next output audio packet; packet None when its audio has not
        arrived yet (ask again after more arrives). The packet's timeline position is `self.out`."""
        if self.silence_due > 0:
            due = (self.last_release or self.clock()) + PACKET_SECONDS
            return due, np.zeros(self.packet, np.float32)
        if len(self.buffer) >= 2 * self.packet and self._can_shrink(self.buffer[: self.packet]):
            self.buffer, self.sent = self.buffer[self.packet :], self.sent + self.packet  # one packet at a time
            self.delay -= self.packet / self.sr
            self.dropped += 1
        if len(self.buffer) >= self.packet:
            # by its first sample: the RTP timestamp, and so the browser's lip sync, refers to that one
            return self.due(self.sent) + self.delay, self.buffer[: self.packet]
        if self.ended and len(self.buffer):
            last = np.pad(self.buffer, (0, self.packet - len(self.buffer)))
            return self.due(self.sent) + self.delay, last
        return self.clock(), None

    def _can_shrink(self, pkt: np.ndarray) -> bool:
        need = self.needed_delay()
        slack = SHRINK_SLACK_PACKETS * self.packet / self.sr
        return need is not None and self.delay - need > slack and float(np.sqrt(np.mean(pkt**2))) < QUIET_RMS

    def audio_sent(self, release: float) -> int:
        """Record that the packet next_audio gave has gone at `release`; returns its timeline position."""
        pts = self.out
        if self.silence_due > 0:
            self.silence_due -= self.packet
        else:
            n = min(self.packet, len(self.buffer))
            self.buffer, self.sent = self.buffer[n:], self.sent + n
        self.out += self.packet
        self.last_release = release
        return pts

    # video out ---------------------------------------------------------------------------------------
    def next_frame_due(self) -> float | None:
        """Release time of the oldest waiting frame, or None when none waits."""
        if not self.frames:
            return None
        return self.due(self.frames[0].start) + self.delay

    def release_frame(self) -> Released:
        """Take the oldest waiting frame as sent now."""
        frame = self.frames.popleft()
        now = self.clock()
        due = self.due(frame.start) + self.delay
        # the same timeline offset as the audio being sent around this content position
        pts = (frame.start + self.out - self.sent) / self.sr
        return Released(frame, pts, now, self.arrival(frame.end - 1), max(0.0, now - due))
