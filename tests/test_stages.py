"""Overlapped stages (bounded producer and consumer threads) and the on-disk array recorder."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from models.runtime.offline import ArrayRecorder, Sink, background


def test_background_keeps_order_and_stays_bounded():
    made = []

    def items():
        for i in range(50):
            made.append(i)
            yield i

    seen = []
    for i in background(items(), maxsize=3):
        seen.append(i)
        assert len(made) - len(seen) <= 3 + 1  # the queue plus the item being put
    assert seen == list(range(50))


def test_background_reraises_and_stops_early():
    def failing():
        yield 1
        raise ValueError("broken producer")

    with pytest.raises(ValueError, match="broken producer"):
        list(background(failing()))

    stopped = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            stopped.set()

    for i in background(endless(), maxsize=2):
        if i == 5:
            break
    assert stopped.wait(5)  # the consumer left: the producer thread was told to stop and ended


def test_sink_handles_in_order_and_reraises():
    got = []
    sink = Sink(got.append, maxsize=2)
    for i in range(20):
        sink.put(i)
    sink.close()
    assert got == list(range(20))

    def fail(item):
        raise OSError(f"disk full at {item}")

    sink = Sink(fail, maxsize=1)
    with pytest.raises(OSError, match="disk full at 0"):
        for i in range(100):  # put() raises the worker's error once it has failed ...
            sink.put(i)
        sink.close()  # ... or close() does
    sink.abort()


def test_recorder_round_trip_and_abort(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 73, 2)) for n in (5, 1, 17)]
    rec = ArrayRecorder(tmp_path / "out.npz")
    for p in parts:
        rec.add(landmarks2d=p, rotation=p[:, 0, :].astype(np.float32))
    assert rec.rows("landmarks2d") == 23
    rec.close(fps=np.float64(60))
    with np.load(tmp_path / "out.npz") as data:
        np.testing.assert_array_equal(data["landmarks2d"], np.concatenate(parts))
        assert data["rotation"].dtype == np.float32 and data["rotation"].shape == (23, 2)
        assert float(data["fps"]) == 60
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]  # no temporary files left

    rec = ArrayRecorder(tmp_path / "other.npz")
    rec.add(x=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="x: rows"):
        rec.add(x=np.zeros((3, 4)))
    rec.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]
