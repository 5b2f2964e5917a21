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


def test_offline_audio_side_works_ahead_of_the_renderer(tmp_path):
    """With overlap, the audio side computes the next chunk while the renderer draws the current one, so a
    fast renderer never waits for a whole chunk of audio-side work (the stall a GPU run showed)."""
    from types import SimpleNamespace

    from models.runtime.offline import write_offline
    from models.runtime.streams import FrameBatch

    chunk, n_chunks, size = 30, 3, (16, 16)
    started = [threading.Event() for _ in range(n_chunks)]

    def batches():
        for c in range(n_chunks):
            started[c].set()  # the audio side begins chunk c
            m = chunk
            yield FrameBatch(c * m, np.zeros((m, 73, 3)), np.zeros((m, 3)), np.zeros((m, 3)), np.zeros((m, 73, 2)),
                             np.zeros((m, 18, 2)), np.zeros((m, 0)))

    rendered = []

    def render(maps):
        if not rendered:  # the first frame of chunk 0: the next chunk must already be under way
            assert started[1].wait(timeout=10), "the audio side did not work ahead of the renderer"
        rendered.append(len(maps))
        return np.zeros((len(maps), *size, 3), np.uint8)

    pipe = SimpleNamespace(renderer=_Renderer(render, size), fps=30.0, sample_rate=16000,
                           settings=SimpleNamespace(save_feature_maps=False), assets=SimpleNamespace(image_size=size))
    audio = np.zeros(int(chunk * n_chunks / 30.0 * 16000), np.float32)
    paths = write_offline(pipe, SimpleNamespace(kept_features=[]), batches(), audio, chunk * n_chunks, tmp_path, "x",
                          batch_size=1, save_intermediates=False, overlap=True, chunk_frames=chunk)
    assert sum(rendered) == chunk * n_chunks and paths["video"].is_file()


class _Renderer:
    """A renderer stand-in: blank feature maps, frames from `fn`."""

    def __init__(self, fn, size):
        self.fn, self.size = fn, size

    def feature_maps(self, face2d, shoulders2d):
        return np.zeros((len(face2d), *self.size), np.uint8)

    def __call__(self, maps):
        return self.fn(maps)
