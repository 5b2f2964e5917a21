"""Offline inference in flat memory: the demo's files written as frames come, optionally in overlapped stages.

`write_offline` renders every frame of a clip into <name>.mp4 (+ audio), <name>_feature_maps.mp4 and
<name>.npz. Per-frame arrays are recorded to disk as they come (`ArrayRecorder`), so memory does not
grow with the audio. With `overlap`, three stages run at once: the audio side and feature-map drawing
(a producer thread, `background`), the renderer (the caller's thread, where the GPU or torch's own
threads work), and encoding and file writing (a consumer thread, `Sink`). Each queue is bounded, so a
fast stage waits for a slow one instead of piling up frames; the producer's queue holds two audio
chunks of frames, so it computes the next chunk while the renderer draws the current one and the
renderer never waits for the audio side. An exception in a worker is re-raised in the caller's
thread; a caller that stops early stops the workers. On a CPU the stages share the same cores and
torch's thread pool, and overlapping them was measured 25% slower on 2 cores than running them in
turn (x264 already encodes in its own process), so overlap is on by default only with CUDA.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from util.io import atomic_write
from util.video import VideoWriter

if TYPE_CHECKING:
    from models.runtime.pipeline import PortraitPipeline
    from models.runtime.streams import AudioSideStream, FrameBatch

_DONE = object()
ENCODE_QUEUE_FRAMES = 16  # rendered frames that may wait for the encoder
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


COPY_BLOCK = 1 << 20


class ArrayRecorder:
    """`add(name=rows, ...)` any number of times, then `close(**constants)` writes the .npz."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=f".{self.path.stem}.tmp.", dir=self.path.parent))
        self._arrays: dict[str, dict] = {}

    def add(self, **arrays: np.ndarray) -> None:
        """Append rows (first axis) to each named array; later rows must keep the dtype and row shape."""
        for name, rows in arrays.items():
            rows = np.ascontiguousarray(rows)
            entry = self._arrays.get(name)
            if entry is None:
                entry = {"file": open(self._dir / name, "wb"), "dtype": rows.dtype,
                         "shape": rows.shape[1:], "rows": 0}
                self._arrays[name] = entry
            if rows.dtype != entry["dtype"] or rows.shape[1:] != entry["shape"]:
                raise ValueError(f"{name}: rows {rows.dtype}{rows.shape[1:]} after {entry['dtype']}{entry['shape']}")
            entry["file"].write(rows.tobytes())
            entry["rows"] += len(rows)

    def rows(self, name: str) -> int:
        return self._arrays[name]["rows"] if name in self._arrays else 0

    def close(self, **constants: np.ndarray) -> Path:
        """Write the .npz (recorded arrays plus `constants` stored whole) and remove the temporary files."""
        try:
            with atomic_write(self.path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name, entry in self._arrays.items():
                    entry["file"].close()
                    header = {"descr": np.lib.format.dtype_to_descr(entry["dtype"]), "fortran_order": False,
                              "shape": (entry["rows"], *entry["shape"])}
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out, open(self._dir / name, "rb") as src:
                        np.lib.format.write_array_header_2_0(out, header)
                        shutil.copyfileobj(src, out, COPY_BLOCK)
                for name, value in constants.items():
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                        np.lib.format.write_array(out, np.asarray(value))
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Drop everything recorded so far."""
        for entry in self._arrays.values():
            entry["file"].close()
        shutil.rmtree(self._dir, ignore_errors=True)


class _Inline:
    """A Sink that works in the caller's thread."""

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.put, self.close, self.abort = fn, lambda: None, lambda: None


class _Outputs:
    """The files a demo run writes per frame: the videos and, with --save_intermediates, PNGs."""

    def __init__(self, pipe: PortraitPipeline, paths: dict[str, Path], audio: np.ndarray,
                 frames_dir: Path | None) -> None:
        self.frames_dir, self.count = frames_dir, 0
        if frames_dir is not None:
            frames_dir.mkdir(exist_ok=True)
        size, rate = pipe.assets.image_size, pipe.sample_rate
        self.writers = [VideoWriter(paths["video"], pipe.fps, size, audio, rate)]
        if "feature_maps" in paths:
            self.writers.append(VideoWriter(paths["feature_maps"], pipe.fps, size, audio, rate, gray=True))

    def write(self, item: tuple[np.ndarray, np.ndarray]) -> None:
        frames, fmaps = item
        for frame, fmap in zip(frames, fmaps):
            self.writers[0].write(frame)
            if len(self.writers) > 1:
                self.writers[1].write(fmap)
            self.count += 1
            if self.frames_dir is not None:
                _save_png(self.frames_dir / f"pred_{self.count:05d}.png", frame)
                _save_png(self.frames_dir / f"input_{self.count:05d}.png", fmap)

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


def _save_png(path: Path, image: np.ndarray) -> None:
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)


def write_offline(pipe: PortraitPipeline, stream: AudioSideStream, batches: Iterable[FrameBatch], audio: np.ndarray,
                  n: int, out_dir: Path, name: str, batch_size: int, save_intermediates: bool, overlap: bool,
                  chunk_frames: int) -> dict[str, Path]:
    """Render the frame batches of `stream` (N frames in all) and write the demo's files into `out_dir`.

    Returns the paths written: video, landmarks (.npz) and, unless the config turned it off, feature_maps.
    """
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"video": out_dir / f"{name}.mp4", "landmarks": out_dir / f"{name}.npz"}
    if pipe.settings.save_feature_maps:
        paths["feature_maps"] = out_dir / f"{name}_feature_maps.mp4"
    recorder = ArrayRecorder(paths["landmarks"])
    outputs = _Outputs(pipe, paths, audio[: round(n / pipe.fps * pipe.sample_rate)],
                       out_dir / "frames" if save_intermediates else None)

    def maps() -> Iterator[np.ndarray]:
        for batch in batches:
            recorder.add(landmarks3d=batch.face3d, rotation=batch.rotation, translation=batch.translation,
                         landmarks2d=batch.face2d, shoulders2d=batch.shoulders2d)
            if save_intermediates and batch.raw_pose.shape[1]:
                recorder.add(headpose_samples=batch.raw_pose)
            for i in range(0, len(batch), batch_size):
                rows = slice(i, i + batch_size)
                yield pipe.renderer.feature_maps(batch.face2d[rows], batch.shoulders2d[rows])

    depth = max(2, -(-2 * chunk_frames // batch_size))  # two audio chunks of frames: the producer works ahead
    sink = Sink(outputs.write, max(2, ENCODE_QUEUE_FRAMES // batch_size), name="encode") if overlap else \
        _Inline(outputs.write)
    try:
        with tqdm(total=n, desc="render", unit="frame") as bar:
            for fmaps in background(maps(), depth, name="audio side") if overlap else maps():
                sink.put((pipe.renderer(fmaps), fmaps))
                bar.update(len(fmaps))
        sink.close()
        outputs.close()
        extras = {"apc_features": np.concatenate(stream.kept_features)[: 2 * n]} if save_intermediates else {}
        recorder.close(fps=np.float64(pipe.fps), **extras)
    except BaseException:
        sink.abort()
        outputs.abort()
        recorder.abort()
        raise
    return paths
