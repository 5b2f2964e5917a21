"""Video output through the static ffmpeg of imageio-ffmpeg: H.264 (yuv420p) + AAC, browser-playable.

Frames are piped raw to ffmpeg (no intermediate JPEGs); audio is muxed from a WAV written beside the
output. Everything is written to a temporary name and renamed when ffmpeg succeeds.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from util.audio import SAMPLE_RATE
from util.io import atomic_write, temporary_path

CRF = 18  # x264 quality: visually lossless for talking heads
PRESET = "veryfast"
AUDIO_BITRATE = "128k"
TRUNCATION_SLACK = 2  # frames a container's frame count may overstate before a video counts as truncated


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (has libx264 and aac)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class VideoWriter:
    """Write RGB frames to an .mp4, optionally muxing mono float audio; use as a context manager."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], audio: np.ndarray | None = None,
                 sample_rate: int = SAMPLE_RATE, gray: bool = False) -> None:
        self.path = Path(path)
        self.height, self.width = size
        self.channels = 1 if gray else 3
        self.frames = 0
        self._tmp = temporary_path(self.path)
        self._wav = None
        cmd = [ffmpeg_exe(), "-y", "-v", "error", "-nostdin", "-f", "rawvideo",
               "-pix_fmt", "gray" if gray else "rgb24", "-s", f"{self.width}x{self.height}", "-r", str(fps), "-i", "-"]
        if audio is not None:
            self._wav = temporary_path(self.path.with_suffix(".wav"))
            try:
                write_wav(self._wav, audio, sample_rate)
            except BaseException:
                self._wav.unlink(missing_ok=True)
                raise
            cmd += ["-i", str(self._wav), "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-shortest"]
        cmd += ["-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", str(self._tmp)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) RGB or (H, W) gray uint8 frame."""
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame {frame.shape[:2]} does not match the video size {(self.height, self.width)}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        except BrokenPipeError as err:
            raise _ffmpeg_error(f"ffmpeg stopped while writing {self.path}", self._stderr()) from err
        self.frames += 1

    def _stderr(self) -> str:
        self._proc.wait()
        return self._proc.stderr.read().decode(errors="replace").strip()[-500:]

    def close(self) -> None:
        """Finish the file; raises RuntimeError with ffmpeg's message on failure."""
        try:
            if self._proc.stdin and not self._proc.stdin.closed:
                self._proc.stdin.close()
            err = self._stderr()
            if self._proc.returncode != 0:
                raise _ffmpeg_error(f"ffmpeg failed writing {self.path}", err)
            os.replace(self._tmp, self.path)
        finally:
            if self._wav is not None:
                self._wav.unlink(missing_ok=True)
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for p in (self._tmp, self._wav):
            if p is not None:
                p.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _ffmpeg_error(what: str, stderr: str) -> Exception:
    """ffmpeg's failure as an exception: OSError(ENOSPC) for a full disk, so the CLIs say so in one line."""
    if "No space left on device" in stderr:
        return OSError(errno.ENOSPC, f"{what}: no space left on device")
    return RuntimeError(f"{what}: {stderr}")


def probe(path: str | Path) -> dict:
    """What a media file holds, as the bundled ffmpeg reports it (imageio-ffmpeg ships no ffprobe).

    Returns:
        {"video": stream description or None, "audio": stream description or None, "frames": decoded count}.
    """
    exe = ffmpeg_exe()
    proc = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0?", "-f", "null", "-"],
                          capture_output=True, text=True, check=False)
    info: dict = {"video": None, "audio": None, "frames": 0}
    for line in proc.stderr.splitlines():
        line = line.strip()
        for kind in ("Video", "Audio"):
            if line.startswith("Stream") and f": {kind}: " in line and info[kind.lower()] is None:
                info[kind.lower()] = line.split(f": {kind}: ", 1)[1]
        if line.startswith("frame="):
            info["frames"] = int(line.split("=")[1].split()[0])
    return info


class VideoReader:
    """Frames of a video file as RGB arrays, in order; rotation metadata is applied by OpenCV."""

    def __init__(self, path: str | Path) -> None:
        import cv2

        from util.errors import InputError, require_file

        self.path = Path(path)
        require_file(self.path, "video")
        self._cap = cv2.VideoCapture(str(self.path))
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok:
            self._cap.release()
            raise InputError(f"video {self.path}: cannot be decoded (not a video OpenCV/FFmpeg can read)")
        self._first = first
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS)) or 0.0
        if not 1.0 <= self.fps <= 240.0:
            raise InputError(f"video {self.path}: implausible frame rate {self.fps}")
        self.num_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))  # an estimate for some containers
        self.height, self.width = first.shape[:2]

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        frame, read = self._first, 0
        while frame is not None:
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            read += 1
            ok, frame = self._cap.read()
            if not ok:
                frame = None
        self._cap.release()
        if read < self.num_frames - TRUNCATION_SLACK:
            logging.getLogger("lsp").warning(
                "video %s: read %d frames, but its container claims %d; the file looks truncated, going on with "
                "what could be read", self.path, read, self.num_frames)

    def close(self) -> None:
        self._cap.release()


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int, block: int = 1 << 16) -> None:
    """Mono float audio to 16-bit PCM, clipped to [-1, 1], a block at a time (no copy of long audio)."""
    import soundfile as sf

    with sf.SoundFile(str(path), "w", sample_rate, 1, subtype="PCM_16") as f:
        for i in range(0, len(audio), block):
            f.write(np.clip(audio[i : i + block], -1, 1))


def mux_audio(video: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Add mono float audio to a silent video in place (AAC; the video stream is copied)."""

    video = Path(video)
    wav = temporary_path(video.with_suffix(".wav"))  # ffmpeg's input only
    try:
        with atomic_write(video) as out:
            write_wav(wav, audio, sample_rate)
            cmd = [ffmpeg_exe(), "-y", "-v", "error", "-nostdin", "-i", str(video), "-i", str(wav), "-c:v", "copy",
                   "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-shortest", "-movflags", "+faststart", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise _ffmpeg_error(f"ffmpeg failed adding audio to {video}", proc.stderr.strip()[-300:])
    finally:
        wav.unlink(missing_ok=True)
