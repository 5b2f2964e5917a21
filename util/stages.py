"""Overlapped pipeline stages: a producer thread feeding a bounded queue, and a consumer thread draining one.

The offline demo runs three stages at once: the audio side and feature-map drawing (a producer),
the renderer (the caller's thread, where the GPU or torch's own threads work), and video encoding
and file writing (a consumer). Each queue is bounded, so a fast stage waits for a slow one instead
of piling up frames: memory stays flat for any audio length. An exception in a worker is re-raised
in the caller's thread; a caller that stops early stops the workers.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_DONE = object()
POLL_SECONDS = 0.1  # how often a blocked worker checks whether it should stop


class _Failure:
    def __init__(self, err: BaseException) -> None:
        self.err = err


def background(items: Iterable[Any], maxsize: int = 4, name: str = "producer") -> Iterator[Any]:
    """Iterate `items` in a background thread, at most `maxsize` items ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:
            put(_Failure(err))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.err
            yield item
    finally:
        stop.set()
        thread.join()


class Sink:
    """Call `fn(item)` for every `put` item in a background thread; `close()` waits and re-raises errors."""

    def __init__(self, fn: Callable[[Any], None], maxsize: int = 4, name: str = "sink") -> None:
        self._fn = fn
        self._q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._error: BaseException | None = None
        self._skip = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is None and not self._skip:  # after a failure or abort: drain, so put() never hangs
                try:
                    self._fn(item)
                except BaseException as err:
                    self._error = err

    def put(self, item: Any) -> None:
        """Queue one item (blocks while the queue is full); raises the worker's error if it failed."""
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def close(self) -> None:
        """Wait for every queued item to be handled; raises the worker's error if it failed."""
        if self._thread.is_alive():
            self._q.put(_DONE)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop the queued items and stop the worker; errors are not raised."""
        self._skip = True
        if self._thread.is_alive():
            self._q.put(_DONE)
            self._thread.join()
