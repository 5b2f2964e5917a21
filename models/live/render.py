"""One renderer per identity, shared by every live session of the server.

Sessions run their audio side in their own threads and hand feature maps to the renderer thread;
requests that are waiting together when the renderer becomes free go through the network as one batch
(on a GPU that is nearly free throughput; on a CPU it costs the same as one call each). Nothing waits
for a batch to fill, so batching adds no latency.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future

import numpy as np

log = logging.getLogger("lsp")
MAX_BATCH = 8  # frames per network call at most (several sessions' frames due at the same moment)
TIMING_WINDOW = 200  # recent render calls kept for the statistics
WARM_UP_CALLS = 3  # timed blank renders at start: the first estimate of one render's time


class SharedRenderer:
    """A FaceRenderer (or anything with feature_maps / __call__ / warm_up) behind one render thread."""

    def __init__(self, renderer: object, max_batch: int = MAX_BATCH, warm_sizes: tuple[int, ...] = (1,)) -> None:
        """`warm_sizes`: batch sizes to prepare before any session starts (a compiled renderer compiles
        each size on its first call, which would stall the sessions waiting for it)."""
        self.renderer, self.max_batch, self.warm_sizes = renderer, max_batch, warm_sizes
        self.requests: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self.times: deque[tuple[int, float]] = deque(maxlen=TIMING_WINDOW)  # (frames, seconds) per call
        self.frames = self.calls = 0
        self.render_s = 0.0
        self.ready: Future = Future()
        self.thread = threading.Thread(target=self._run, name="lsp-renderer", daemon=True)
        self.thread.start()
        self.ready.result()  # the warm-up's error, if any, is raised here

    def _warm_up(self) -> float:
        """First-call costs now, and the time of one frame (the start value of a session's delay): the fastest
        of a few calls, as other work on the machine only ever adds to it."""
        for n in self.warm_sizes:
            self.renderer.warm_up(n)
        size = self.renderer.size if hasattr(self.renderer, "size") else (64, 64)
        blank = np.zeros((1, *size), np.uint8)
        times = []
        for _ in range(WARM_UP_CALLS):
            start = time.perf_counter()
            self.renderer(blank)
            times.append(time.perf_counter() - start)
        return float(min(times))

    def proxy(self) -> RendererProxy:
        """The object a StreamingSession renders through."""
        return RendererProxy(self)

    def render(self, maps: np.ndarray) -> np.ndarray:
        """(B, H, W) feature maps -> (B, H, W, 3) frames, rendered by the shared thread (blocks)."""
        done: Future = Future()
        self.requests.put((maps, done))
        return done.result()

    def _take_batch(self) -> list[tuple[np.ndarray, Future]] | None:
        first = self.requests.get()
        if first is None:
            return None
        batch, frames = [first], len(first[0])
        while frames < self.max_batch:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.requests.put(None)  # stop after this batch
                break
            batch.append(item)
            frames += len(item[0])
        return batch

    def _run(self) -> None:
        try:  # in this thread, as every later render: thread pools and caches are set up for it
            self.render_s = self._warm_up()
        except Exception as err:
            self.ready.set_exception(err)
            return
        self.ready.set_result(True)
        while (batch := self._take_batch()) is not None:
            maps = np.concatenate([m for m, _ in batch]) if len(batch) > 1 else batch[0][0]
            start = time.perf_counter()
            try:
                frames = self.renderer(maps)
            except Exception as err:  # a failing render must fail its sessions, not the server
                log.exception("renderer failed")
                for _, done in batch:
                    done.set_exception(err)
                continue
            self.times.append((len(maps), time.perf_counter() - start))
            self.frames, self.calls = self.frames + len(maps), self.calls + 1
            i = 0
            for m, done in batch:
                done.set_result(frames[i : i + len(m)])
                i += len(m)
        self._fail_pending()

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[1].set_exception(RuntimeError("the renderer was closed"))

    def stats(self) -> dict[str, float]:
        """Frames rendered, calls, mean batch and ms per frame over the recent calls."""
        recent = list(self.times)
        frames = sum(n for n, _ in recent)
        ms = 1000 * sum(s for _, s in recent) / frames if frames else 1000 * self.render_s
        return {"frames": self.frames, "calls": self.calls, "mean_batch": frames / len(recent) if recent else 0.0,
                "ms_per_frame": round(ms, 2)}

    def close(self) -> None:
        """Stop the render thread; waiting requests fail."""
        self.requests.put(None)
        self.thread.join(timeout=10)


class RendererProxy:
    """What one StreamingSession sees as its renderer: feature maps drawn in the session's own thread,
    the network run by the shared render thread."""

    def __init__(self, shared: SharedRenderer) -> None:
        self.shared = shared

    def warm_up(self, batch_size: int = 1) -> None:
        """Nothing to do: the shared renderer warmed up once, when it was made."""

    def feature_maps(self, face2d: np.ndarray, shoulders2d: np.ndarray) -> np.ndarray:
        return self.shared.renderer.feature_maps(face2d, shoulders2d)

    def __call__(self, maps: np.ndarray) -> np.ndarray:
        return self.shared.render(maps)
