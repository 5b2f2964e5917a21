"""Helpers of tests/test_serve.py: a test identity and renderer, a Python WebRTC viewer, HTTP calls."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import yaml
from conftest import load_script

from models.live.identities import IdentityPool
from models.live.playout import OutFrame, Playout
from models.synthetic import make_identity

SR = 16000
MOUTH_GAIN = 1000  # the random-weight mouth moves ~1/1000 px; this makes its speech-driven motion visible


def make_project(root):
    """A tiny random-weight identity whose mouth visibly follows the audio and whose head stays still."""
    config = make_identity(root, "tiny", size=64) / "tiny.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["model_params"]["Audio2Mouth"]["AMP"] = ["XYZ", MOUTH_GAIN, MOUTH_GAIN, MOUTH_GAIN]
    cfg["model_params"]["Headpose"]["AMP"] = [0, 0]
    config.write_text(yaml.safe_dump(cfg))
    return root


class FeatureMapRenderer:
    """Shows the feature map (the line drawing of the predicted landmarks) as the frame: unlike a
    random-weight generator, its mouth region follows the mouth landmarks exactly."""

    def __init__(self, inner, delay: float = 0.0):
        self.inner, self.delay, self.size = inner, delay, inner.size

    def feature_maps(self, face2d, shoulders2d):
        return self.inner.feature_maps(face2d, shoulders2d)

    def warm_up(self, batch_size=1):
        pass

    def __call__(self, maps):
        time.sleep(self.delay * len(maps))
        return np.repeat(maps[..., None], 3, axis=3)


def pool_for(project, delay: float = 0.0) -> IdentityPool:
    return IdentityPool(project / "config", "cpu", "torch", wrap_renderer=lambda r: FeatureMapRenderer(r, delay))


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def feed(playout: Playout, seconds: float, level: float = 0.1, start: float = 0.0) -> None:
    for k in range(round(seconds / 0.02)):
        playout.add_audio(np.full(320, level, np.float32), start + 0.02 * (k + 1))


def frame(start_s: float, ready: float) -> OutFrame:
    s = round(start_s * SR)
    return OutFrame(0, 0, np.zeros((4, 4, 3), np.uint8), s, s + SR // 60, ready)


def call(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body or {}, headers) of a GET, or of a POST when `data` is given."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, head = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        status, raw, head = err.code, err.read(), dict(err.headers)
    body = json.loads(raw) if head.get("Content-Type", "").startswith("application/json") else {}
    return status, body, head


def serve(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = load_script("serve").main(list(args))
    errors = [line for line in err.getvalue().splitlines() if line.startswith("serve.py:")]  # not the log lines
    return code, "\n".join(errors)


def resources() -> tuple[int, float, int]:
    """(native threads other than the event loops' worker pools, resident MB, live session objects) of this
    process, which runs the server too. Those pools (aiortc encodes and decodes in them) grow on demand
    up to a fixed size; freed memory is handed back to the system first (malloc_trim) so that the
    allocator's caches do not read as a leak."""
    import ctypes
    import gc
    import os

    from models.live.connection import LiveConnection, SessionWorker
    from models.live.runtime import StreamingSession

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    kinds = (LiveConnection, SessionWorker, StreamingSession)
    alive = sum(type(o) in kinds for o in gc.get_objects())  # type(): isinstance would wake lazy modules
    pools = sum(t.name.startswith(("asyncio_", "ThreadPoolExecutor")) for t in threading.enumerate())
    rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    return len(os.listdir("/proc/self/task")) - pools, rss / 1024, alive


async def viewer_cycle(base: str, stop: bool = True, alive: float = 0.0) -> None:
    """Connect with a silent microphone, wait for the first frame, keep `alive` seconds (with heartbeats),
    then stop, or vanish without a word (no stop, no close) when not `stop`."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack

    pc = RTCPeerConnection()
    first = asyncio.Event()
    channel = pc.createDataChannel("lsp")
    channel.on("message", lambda m: json.loads(m)["type"] == "frame" and first.set())
    pc.addTrack(AudioStreamTrack())
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = json.dumps({"sdp": pc.localDescription.sdp, "type": "offer", "identity": "tiny"}).encode()
    status, answer, _ = await asyncio.get_running_loop().run_in_executor(None, call, base + "api/offer", offer)
    assert status == 200, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await asyncio.wait_for(first.wait(), 30)
    for _ in range(round(alive / 0.5)):
        channel.send(json.dumps({"type": "ping", "t": 0}))
        await asyncio.sleep(0.5)
    if not stop:
        return  # the event loop ends under the connection, as when a browser crashes
    await asyncio.get_running_loop().run_in_executor(None, call, base + f"api/sessions/{answer['session']}/stop", b"")
    await pc.close()


def wait_sessions(bg, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while bg.call(lambda: len(bg.server.sessions)) != n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bg.call(lambda: len(bg.server.sessions)) == n


def mouth_box(project) -> tuple[slice, slice]:
    """Rows and columns of the identity's mouth in a 64 x 64 frame, from an offline run on silence."""
    from models.live.runtime import load_pipeline

    pipe = load_pipeline("tiny", "cpu", project / "config", "torch")
    lips = np.median(pipe.predict(np.zeros(SR, np.float32)).face2d[:, 46:64], axis=0)
    (x0, y0), (x1, y1) = np.floor(lips.min(0)).astype(int) - 3, np.ceil(lips.max(0)).astype(int) + 3
    return slice(max(0, y0), y1), slice(max(0, x0), x1)


GRAB_FRAMES = """() => {  // keep each new frame on screen as 64 x 64 grey, with the audio level the server gave it
  const video = document.getElementById("video"), canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  canvas.width = canvas.height = 64;
  window.grabbed = [];
  let last = null;
  const grab = () => {
    video.requestVideoFrameCallback(grab);
    const seq = lsp.hello ? readCode(video) : null, msg = info.get(seq);
    if (seq === null || seq === last || !msg) return;
    last = seq;
    ctx.drawImage(video, 0, 0, video.videoWidth, lsp.hello.code.top * video.videoHeight / lsp.hello.code.height,
                  0, 0, 64, 64);
    const px = ctx.getImageData(0, 0, 64, 64).data, gray = [];
    for (let i = 0; i < 64 * 64; i++) gray.push(Math.round((px[4 * i] + px[4 * i + 1] + px[4 * i + 2]) / 3));
    window.grabbed.push({ level: msg.lvl, gray });
  };
  video.requestVideoFrameCallback(grab);
}"""


def measure_cycles(project: str, cycles: int = 50) -> dict:
    """Connect and disconnect `cycles` viewers one after another; the resource counts after 20 and after all
    cycles, the server's stats and the session threads left (run in a fresh process, see below)."""
    from pathlib import Path

    from models.live.server import BackgroundServer, ServerConfig

    pool = pool_for(Path(project))
    pool.load("tiny")
    counts = []
    with BackgroundServer(ServerConfig("tiny", port=0, max_sessions=1), pool) as bg:
        for k in range(cycles):
            asyncio.run(viewer_cycle(bg.url))
            if k in (19, cycles - 1):
                wait_sessions(bg, 0)
                counts.append(resources())
        stats = bg.call(bg.server.stats)
    pool.close()
    left = [t.name for t in threading.enumerate() if t.name.startswith("lsp-session")]
    return {"counts": counts, "sessions": stats["sessions"], "ended": stats["ended_sessions"], "threads_left": left}


def measure_cycles_in_a_fresh_process(project, cycles: int = 50) -> dict:
    """measure_cycles in a new interpreter: the test suite's own process carries whatever earlier tests
    allocated (and keep allocating in their leftover threads), which would read as the server's growth."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    code = ("import json, sys; from serve_helpers import measure_cycles; "
            "print(json.dumps(measure_cycles(sys.argv[1], int(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, str(project), str(cycles)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
