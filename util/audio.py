"""Audio: decoding any file to 16 kHz mono, and the LSP log-mel spectrogram (2 frames per video frame).

The mel features reproduce the original's per-frame analysis exactly (LSP §1.2), because the APC
encoder weights and every identity's APC_feature_base were computed from it:

* mel frame i analyses the clip ``audio[int(i*hop) : int(i*hop) + win]`` (hop = sr/(2*fps) as a float,
  win = int(sr/fps)), zero-padded at the end of the audio;
* the clip is reflect-padded by ``(n_fft - int(hop)) // 2`` and one STFT frame is taken with a periodic
  Hann window of ``win`` taps centred in the ``n_fft`` frame, so the window covers clip samples
  -66..199 (reflected) rather than being centred on the clip. We keep that off-centre analysis
  deliberately: released APC weights need it;
* linear magnitude -> Slaney mel (80 bands, 90-7600 Hz, area-normalised) -> ln(max(x, 1e-5)),
  normalised to (x - ln 1e-5) / -ln 1e-5.

Here all frames are computed in one vectorised FFT instead of the original's Python loop.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from util.errors import InputError, require_file

SAMPLE_RATE = 16000  # LSP §1.1: every stage works on 16 kHz mono
LOG_FLOOR = 1e-5  # LSP §1.2: clamp before the log; also the 0 point of the normalised scale
MEL_PER_VIDEO_FRAME = 2  # LSP §1.13: two mel/APC frames per video frame
# Compressed formats go straight to ffmpeg (-v error): libsndfile's mpg123 prints notes of its own on stderr.
FFMPEG_FIRST = (".mp3", ".m4a", ".aac", ".mp4", ".mov", ".mkv", ".webm")


@dataclass(frozen=True)
class MelConfig:
    """Parameters of the LSP log-mel analysis; defaults are the original's (LSP §1.2)."""

    sample_rate: int = SAMPLE_RATE
    fps: float = 60.0
    n_fft: int = 512
    n_mels: int = 80
    fmin: float = 90.0
    fmax: float = 7600.0

    @property
    def hop(self) -> float:
        """Float step between mel frames in samples (133.33 at 16 kHz, 60 fps)."""
        return self.sample_rate / (MEL_PER_VIDEO_FRAME * self.fps)

    @property
    def win_length(self) -> int:
        """Clip and window length in samples (266): one video frame of audio."""
        return int(self.sample_rate / self.fps)

    @property
    def stft_hop(self) -> int:
        """Integer hop given to the STFT, which sets the reflect padding (133)."""
        return int(self.hop)

    def num_video_frames(self, num_samples: int) -> int:
        """Video frames covered by `num_samples` of audio: int(samples / sr * fps) (LSP §1.1)."""
        return int(num_samples / self.sample_rate * self.fps)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-scale, area-normalised triangular mel filters, as librosa.filters.mel (htk=False).

    Returns:
        (n_mels, n_fft // 2 + 1) float64 matrix.
    """

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        f_sp, min_log_hz = 200.0 / 3, 1000.0
        logstep = np.log(6.4) / 27.0
        mel = f / f_sp
        log_region = f >= min_log_hz
        return np.where(log_region, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        f_sp, min_log_hz = 200.0 / 3, 1000.0
        min_log_mel = min_log_hz / f_sp
        logstep = np.log(6.4) / 27.0
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_freqs = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2 : n_mels + 2] - mel_freqs[:n_mels]))[:, None]
    return weights


def _reflect(index: np.ndarray, length: int) -> np.ndarray:
    """Map indices outside [0, length) back inside by mirror reflection without edge repeat."""
    index = np.abs(index)
    return np.where(index >= length, 2 * (length - 1) - index, index)


class LogMel:
    """Vectorised LSP log-mel: ``LogMel(cfg)(audio)`` -> (2N, 80) float32 for N video frames."""

    def __init__(self, cfg: MelConfig = MelConfig()) -> None:
        self.cfg = cfg
        win = cfg.win_length
        if not 0 < win <= cfg.n_fft:
            raise InputError(f"mel: the window of one video frame, {win} samples (sample rate / fps = "
                             f"{cfg.sample_rate}/{cfg.fps:g}), must fit n_fft={cfg.n_fft}: use fps >= "
                             f"{cfg.sample_rate / cfg.n_fft:g}")
        pad = (cfg.n_fft - cfg.stft_hop) // 2
        if pad >= win:
            raise InputError(f"mel: reflect padding {pad} must be shorter than the clip ({win} samples)")
        # Window position inside the reflect-padded clip, as torch.stft places a short window.
        first = (cfg.n_fft - win) // 2 - pad
        self.clip_index = _reflect(np.arange(first, first + win), win)  # (win,)
        n = np.arange(win)
        self.window = 0.5 - 0.5 * np.cos(2 * np.pi * n / win)  # periodic Hann
        self.basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)

    def clips(self, audio: np.ndarray, start: int, stop: int, offset: int = 0) -> np.ndarray:
        """The raw clips of mel frames start..stop-1, zero-padded past the end of `audio`: (F, win).

        `offset` is the absolute index of audio[0], for a buffer that holds only the stream's tail.
        """
        win = self.cfg.win_length
        offsets = (np.arange(start, stop) * self.cfg.hop).astype(np.int64) - offset
        idx = offsets[:, None] + np.arange(win)[None, :]
        padded = np.concatenate([audio, np.zeros(win, dtype=audio.dtype)]) if len(audio) else np.zeros(win)
        idx = np.minimum(idx, len(padded) - 1)
        out = padded[idx]
        out[idx >= len(audio)] = 0.0
        return out

    def from_clips(self, clips: np.ndarray) -> np.ndarray:
        """Log-mel of each clip: (F, win) -> (F, n_mels) float32."""
        frames = clips[:, self.clip_index] * self.window  # (F, win)
        # The magnitude is invariant to where the window sits in the n_fft frame, so no shift is needed.
        mag = np.abs(np.fft.rfft(frames, n=self.cfg.n_fft, axis=1))  # (F, n_fft/2+1)
        mel = mag @ self.basis.T
        log = np.log(np.maximum(mel, LOG_FLOOR))
        return ((log - np.log(LOG_FLOOR)) / -np.log(LOG_FLOOR)).astype(np.float32)

    def __call__(self, audio: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Mel frames start..stop-1 of `audio` (default: all 2N frames of the clip)."""
        if stop is None:
            stop = MEL_PER_VIDEO_FRAME * self.cfg.num_video_frames(len(audio))
        return self.from_clips(self.clips(np.asarray(audio, dtype=np.float64), start, stop))



def log_mel_framewise(audio: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """The original algorithm: a Python loop with one torch.stft call per mel frame (LSP §1.2).

    Kept as the reference for benchmarks; `LogMel` gives the same numbers in one vectorised pass.
    """
    import torch
    import torch.nn.functional as F

    basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    basis = torch.from_numpy(basis.astype(np.float32))
    window = torch.hann_window(cfg.win_length)
    pad = (cfg.n_fft - cfg.stft_hop) // 2
    n = MEL_PER_VIDEO_FRAME * cfg.num_video_frames(len(audio))
    wav = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    out = np.zeros((n, cfg.n_mels), dtype=np.float32)
    for i in range(n):
        start = int(i * cfg.hop)
        clip = wav[start : start + cfg.win_length]
        clip = F.pad(clip, (0, cfg.win_length - clip.numel()))
        clip = F.pad(clip[None, None], (pad, pad), mode="reflect")[0, 0]
        spec = torch.stft(clip, cfg.n_fft, hop_length=cfg.stft_hop, win_length=cfg.win_length,
                          window=window, center=False, return_complex=True)
        mel = basis @ spec.abs()[:, 0]
        out[i] = ((torch.log(mel.clamp(min=LOG_FLOOR)) - np.log(LOG_FLOOR)) / -np.log(LOG_FLOOR)).numpy()
    return out


def _decode_with_ffmpeg(path: Path, sample_rate: int, what: str = "audio file") -> np.ndarray:
    """Decode any audio/video file's first audio stream to mono float32 at `sample_rate` with ffmpeg."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-vn",
           "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InputError(f"{what} {path}: cannot be decoded as audio ({reason[-1] if reason else 'ffmpeg failed'})")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, what: str = "audio file") -> np.ndarray:
    """Decode `path` (wav/flac/ogg/mp3/m4a/mp4/..., any rate, any channel count) to mono float32.

    Raises:
        MissingFileError: the file does not exist.
        InputError: the file cannot be decoded or holds no samples.
    """
    import soundfile as sf
    import soxr

    path = Path(path)
    require_file(path, what)
    try:
        if path.suffix.lower() in FFMPEG_FIRST:
            raise RuntimeError("decoded by ffmpeg")
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        audio = _decode_with_ffmpeg(path, sample_rate, what)
    else:
        audio = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
        if rate != sample_rate and audio.size:
            audio = soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32)
    if audio.size == 0:
        raise InputError(f"{what} {path}: contains no audio samples")
    if not np.all(np.isfinite(audio)):
        raise InputError(f"{what} {path}: contains NaN or infinite samples")
    return np.ascontiguousarray(audio, dtype=np.float32)
