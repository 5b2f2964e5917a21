"""The identities a server offers: each loaded once (networks + one shared renderer), on first use."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.live import runtime
from models.live.playout import PACKET_SECONDS
from models.live.render import MAX_BATCH, SharedRenderer
from models.live.tracks import output_scale
from util.errors import InputError

log = logging.getLogger("lsp")
NO_SKIP_MAX_DELAY = 3.0  # seconds: the playout delay's ceiling when sessions never skip frames
SKIP_HEADROOM = 0.25  # seconds above the frame-skipping bound the playout delay may grow to


@dataclass
class Loaded:
    """One identity, ready for sessions."""

    name: str
    pipe: runtime.PortraitPipeline
    renderer: SharedRenderer

    @property
    def scale(self) -> int:
        return output_scale(self.pipe.assets.image_size)

    def open_session(self, settings: runtime.SessionSettings) -> runtime.StreamingSession:
        """A fresh StreamingSession rendering through the shared renderer."""
        return runtime.open_session(self.pipe, self.renderer.proxy(), settings)

    def delays(self, session: runtime.StreamingSession, settings: runtime.SessionSettings) -> tuple[float, float]:
        """(first, largest) playout delay in seconds for a session. First: the lookahead, the audio-side
        cadence, two packets of arrival jitter and two render times. Largest: the frame-skipping bound
        (lookahead + max_lag + the render in progress + its own render) with SKIP_HEADROOM for a machine
        busier than at the warm-up; a frame later than the delay leaves late, out of sync by that much."""
        render = self.renderer.render_s
        base = session.lookahead / self.pipe.fps + settings.hop_ms / 1000 + 2 * PACKET_SECONDS
        first = base + 2 * render
        if settings.max_lag_ms is None:
            return first, max(first, NO_SKIP_MAX_DELAY)
        return first, base + settings.max_lag_ms / 1000 + 2 * render + SKIP_HEADROOM


def settle_heap() -> None:
    """Collect the garbage of a load, then exempt every object alive now (networks, modules, libraries) from
    Python's cyclic garbage collector. A full collection walks every tracked object with the GIL held: in a
    live server with an identity loaded that is about 230,000 objects and 100 ms, during which no session's
    audio side, frame hand-off or packet moves (measured on the 2-core CPU; frames skipped in bursts). After
    the freeze it walks only what was made since: well under a millisecond. Objects freed by reference
    counting are freed as before."""
    gc.collect()
    gc.freeze()


class IdentityPool:
    """Trained identities under the config folder; a pipeline and renderer per identity once asked for."""

    def __init__(self, config_dir: Path | None, device: str, backend: str, max_batch: int = MAX_BATCH,
                 wrap_renderer: Callable[[object], object] | None = None) -> None:
        """`max_batch`: the most frames one renderer call takes (one per concurrent session)."""
        self.config_dir, self.device, self.backend, self.wrap = config_dir, device, backend, wrap_renderer
        self.max_batch = max(1, min(max_batch, MAX_BATCH))
        self.loaded: dict[str, Loaded] = {}
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        """Every trained identity, plus any already loaded."""
        return sorted(set(runtime.list_identities(self.config_dir)) | set(self.loaded))

    def load(self, name: str) -> Loaded:
        """The identity `name`, loading it now if needed (InputError for a bad name or files)."""
        runtime.checked_identity(name)
        with self.lock:
            if name not in self.loaded:
                log.info("loading identity %s (%s, %s renderer)", name, self.device, self.backend)
                pipe = runtime.load_pipeline(name, self.device, self.config_dir, self.backend)
                renderer = self.wrap(pipe.renderer) if self.wrap else pipe.renderer
                sizes = tuple(range(1, self.max_batch + 1)) if self.backend == "compile" else (1,)
                self.loaded[name] = Loaded(name, pipe, SharedRenderer(renderer, self.max_batch, sizes))
                settle_heap()
                log.info("identity %s ready: %dx%d frames at %g fps, %.1f ms per render", name,
                         *pipe.assets.image_size[::-1], pipe.fps, 1000 * self.loaded[name].renderer.render_s)
            return self.loaded[name]

    async def get(self, name: str) -> Loaded:
        """`load` without blocking the event loop; only names `names()` lists are accepted."""
        if name not in self.loaded and name not in self.names():
            raise InputError(f"identity {name!r}: not a trained identity under the config folder "
                             f"(available: {', '.join(self.names()) or 'none'})")
        return await asyncio.get_running_loop().run_in_executor(None, self.load, name)

    def check_audio(self, name: str, audio: np.ndarray, what: str) -> None:
        """InputError when `audio` is shorter than the identity's lookahead."""
        self.loaded[name].pipe.check_audio(audio, what)

    def close(self) -> None:
        for item in self.loaded.values():
            item.renderer.close()
        self.loaded.clear()
