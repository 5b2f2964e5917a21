"""scripts/benchmark.py --serve: the live server driven by headless Chromium with a speech file as its
microphone, measured the way a viewer sees it (glass-to-glass latency, frames/s, skipped frames, lips
versus sound), for one or several concurrent sessions."""

from __future__ import annotations

import argparse
import json
import logging
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from util.errors import InputError

if TYPE_CHECKING:
    from models.live.runtime import SessionSettings

log = logging.getLogger("lsp")
WARM_UP_SECONDS = 3.0  # measured figures start this long after the first frame
SERVE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "serve.py"
SERVER_START_TIMEOUT = 300.0  # seconds for the server to load the identity and listen


@dataclass
class PageLog:
    """What one page measured after the warm-up."""

    g2g: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)
    ept: list[tuple[float, float]] = field(default_factory=list)  # (seconds, ms): the browser's A/V estimate
    loudness: list[tuple[float, float]] = field(default_factory=list)  # (seconds, ms): lining up loudness
    skips: list[tuple[float, int]] = field(default_factory=list)  # (seconds, frames skipped so far)
    seen: dict[str, int] = field(default_factory=dict)  # list lengths already read
    start: dict = field(default_factory=dict)  # counters at the end of the warm-up

    def take(self, state: dict, t: float, record: bool = True) -> None:
        """Add what the page measured since the last call (at the first, `record=False`, only note it)."""
        if record:
            self.skips.append((t, state["skipped"] - self.start["skipped"]))
        for key, out in (("g2gCount", self.g2g), ("serverCount", self.server)):
            new = state[key] - self.seen.get(key, state[key])
            values = state["g2g" if key == "g2gCount" else "server"]
            out.extend(values[len(values) - min(new, len(values)) :] if new > 0 and record else [])
            self.seen[key] = state[key]
        for key, out in (("eptOffsets", self.ept), ("lipSync", self.loudness)):
            for at, ms in state[key]:
                if at > self.seen.get(key, 0):
                    if record:
                        out.append((t, ms))
                    self.seen[key] = at


def speech_wav(audio: Path, seconds: float, folder: Path) -> Path:
    """`audio` decoded, looped to `seconds`, as the 16-bit WAV Chromium's fake microphone wants."""
    import soundfile as sf

    from util.audio import SAMPLE_RATE, load_audio

    clip = load_audio(audio, SAMPLE_RATE, what="--audio")
    path = folder / "microphone.wav"
    sf.write(path, np.resize(clip, int(seconds * SAMPLE_RATE)), SAMPLE_RATE, subtype="PCM_16")
    return path


def _percentiles(values: list[float], *qs: float) -> list[float | None]:
    return [round(float(np.percentile(values, q)), 1) if values else None for q in qs]


def _by_minute(series: list[tuple[float, float]]) -> list[float]:
    """Median of a series of (seconds, ms) in each minute."""
    minutes: dict[int, list[float]] = {}
    for t, v in series:
        minutes.setdefault(int(t // 60), []).append(v)
    return [round(float(np.median(v)), 1) for _, v in sorted(minutes.items())]


def _per_minute(counts: list[tuple[float, int]]) -> list[int]:
    """From a running count [(seconds, total so far)]: how much it grew in each minute."""
    out, last = [], 0
    for minute in range(int(max((t for t, _ in counts), default=0) // 60) + 1):
        total = max((n for t, n in counts if t < 60 * (minute + 1)), default=last)
        out.append(total - last)
        last = total
    return out


def _drift(series: list[tuple[float, float]]) -> float | None:
    """Slope of a series of (seconds, ms) in ms per minute."""
    if len(series) < 5:
        return None
    t, v = np.asarray(series).T
    return round(float(np.polyfit(t, v, 1)[0] * 60), 2)


class ServerProcess:
    """scripts/serve.py in a process of its own, as a deployment runs it: the browser and its driver (the
    Playwright client, which parses every message of the page in Python) stay out of the server's process.
    `with ServerProcess([...flags]) as server: server.url, server.stats()`."""

    def __init__(self, flags: list[str], log_file: Path) -> None:
        self.cmd = [sys.executable, str(SERVE_SCRIPT), "--port", "0", *flags]
        self.log_file, self.url = log_file, ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        lines: queue.Queue[str | None] = queue.Queue()
        with open(self.log_file, "w") as log_out:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=log_out, text=True)

        def read() -> None:
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            if match := re.search(r" at (https?://\S+)", line):
                self.url = match.group(1)
                return self
        self._end()
        errors = [x for x in self.log_file.read_text().splitlines() if x.startswith("serve.py:")]
        raise InputError(errors[-1].removeprefix("serve.py: error: ") if errors else
                         f"the live server did not start within {SERVER_START_TIMEOUT:.0f} s "
                         f"(its log: {self.log_file.read_text()[-500:]})")

    def stats(self) -> dict:
        """The server's /api/stats."""
        with urllib.request.urlopen(self.url.split("?")[0] + "api/stats", timeout=30) as reply:
            return json.loads(reply.read())

    def _end(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # serve.py ends its sessions and exits
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self._end()


def run_serve_benchmark(identity: str, config_dir: Path | None, audio: Path, seconds: float, device: str,
                        backend: str, settings: SessionSettings, sessions: int = 1,
                        screenshot: Path | None = None) -> dict:
    """Serve `identity` (scripts/serve.py, its own process) with `settings`, open `sessions` pages speaking
    `audio` for `seconds` after a warm-up, and return the serve_* figures (latency percentiles over every
    page's frames)."""
    from models.live.browser import Viewer, chromium

    flags = ["--id", identity, "--device", device, "--backend", backend, "--max_sessions", str(sessions),
             "--frame_step", str(settings.frame_step), "--max_lag_ms", str(settings.max_lag_ms or 0),
             "--hop_ms", str(settings.hop_ms)]
    flags += ["--config_dir", str(config_dir)] if config_dir is not None else []
    with tempfile.TemporaryDirectory(prefix="lsp-bench-") as tmp, \
            ServerProcess(flags, Path(tmp) / "server.log") as server, \
            chromium(speech_wav(audio, seconds + WARM_UP_SECONDS + 10, Path(tmp))) as browser:
        pages = [Viewer(browser.new_page(viewport={"width": 1000, "height": 760}), server.url) for _ in range(sessions)]
        for page in pages:
            page.start_mic(identity)
        for page in pages:
            page.wait("window.lsp.frames > 0", 60)
        pages[0].run_for(WARM_UP_SECONDS)
        logs = [PageLog() for _ in pages]
        begin = time.monotonic()
        for page, record in zip(pages, logs):
            state = page.state()
            record.take(state, 0.0, record=False)
            record.start = {k: state[k] for k in ("frames", "skipped", "late")}
        while (elapsed := time.monotonic() - begin) < seconds:
            pages[0].page.wait_for_timeout(1000)
            for page, record in zip(pages, logs):
                record.take(page.state(), time.monotonic() - begin)
            log.info("serve benchmark: %.0f of %.0f s, glass-to-glass p50 %s ms", elapsed, seconds,
                     _percentiles(logs[0].g2g, 50)[0])
        states = [page.state() for page in pages]
        for state, record in zip(states, logs):
            record.take(state, time.monotonic() - begin)
        stats = server.stats()
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            pages[0].page.screenshot(path=str(screenshot), full_page=True)
        for page in pages:
            page.stop()
    return _summary(logs, states, stats, seconds, settings, backend)


def _summary(logs: list[PageLog], states: list[dict], server: dict, seconds: float,
             settings: SessionSettings, backend: str) -> dict:
    g2g = [x for r in logs for x in r.g2g]
    srv = [x for r in logs for x in r.server]
    ept = [v for r in logs for _, v in r.ept]
    loud = [v for r in logs for _, v in r.loudness]
    frames = sum(s["frames"] - r.start["frames"] for s, r in zip(states, logs))
    skipped = sum(s["skipped"] - r.start["skipped"] for s, r in zip(states, logs))
    p50, p95 = _percentiles(g2g, 50, 95)
    return {"serve_latency_ms_p50": p50, "serve_latency_ms_p95": p95,
            "serve_server_latency_ms_p50": _percentiles(srv, 50)[0],
            "serve_server_latency_ms_p95": _percentiles(srv, 95)[0],
            "serve_fps": round(frames / seconds / len(logs), 2), "serve_frames": frames, "serve_skipped": skipped,
            "serve_skipped_by_minute": [sum(x) for x in zip(*(_per_minute(r.skips) for r in logs))],
            "serve_av_offset_ms": _percentiles(ept, 50)[0],
            "serve_av_offset_ms_range": [_percentiles(ept, 5)[0], _percentiles(ept, 95)[0]],
            "serve_av_offset_loudness_ms": _percentiles(loud, 50)[0],
            "serve_av_drift_ms_per_min": _drift(logs[0].ept),
            "serve_av_offset_ms_by_minute": _by_minute(logs[0].ept),
            "serve_av_drift_loudness_ms_per_min": _drift(logs[0].loudness),
            "serve_late_frames": sum(s["late"] - r.start["late"] for s, r in zip(states, logs)),
            "serve_sessions": len(logs), "serve_seconds": seconds, "serve_method": states[0]["method"],
            "serve_frame_step": settings.frame_step, "serve_max_lag_ms": settings.max_lag_ms,
            "serve_hop_ms": settings.hop_ms, "serve_backend": backend,
            "serve_renderer": server["renderers"], "serve_delay_ms": [s["delay_ms"] for s in server["per_session"]]}


def serve_main(args: argparse.Namespace) -> int:
    """benchmark.py --serve: run, print, write --json; one-line errors for bad input."""
    from models.live.runtime import SessionSettings
    from util.log import get_logger

    get_logger()
    audio = args.audio or Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "speech_3s.wav"
    try:
        if args.id is None:
            raise InputError("--serve needs --id (a trained identity)")
        served = SessionSettings()  # the server's own defaults, where a flag was not given
        settings = SessionSettings(args.frame_step,
                                   served.max_lag_ms if args.max_lag_ms is None else args.max_lag_ms or None,
                                   served.hop_ms if args.hop_ms is None else args.hop_ms)
        result = run_serve_benchmark(args.id, args.config_dir, audio, args.stream_seconds or 10.0, args.device,
                                     args.stream_backend, settings, args.serve_sessions, args.serve_screenshot)
    except InputError as err:
        print(f"benchmark.py: error: {err}", file=sys.stderr)
        return 2
    for key, value in result.items():
        print(f"{key:>30}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
