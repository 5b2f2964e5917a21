"""Audio decoding and the LSP log-mel, checked against an independent librosa computation."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf
from conftest import FIXTURES

from util.audio import LogMel, MelConfig, load_audio, log_mel_framewise, mel_filterbank
from util.errors import InputError, MissingFileError
from util.video import ffmpeg_exe


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(FIXTURES / "speech_3s.wav")


def librosa_reference(audio: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """The release's analysis written with librosa, frame by frame, as LSP §1.2 describes it."""
    import librosa

    basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    pad = (cfg.n_fft - cfg.stft_hop) // 2
    n = 2 * int(len(audio) / cfg.sample_rate * cfg.fps)
    out = []
    for i in range(n):
        start = int(i * cfg.sample_rate * 0.5 / cfg.fps)
        clip = np.zeros(cfg.win_length)
        seg = audio[start : start + cfg.win_length]
        clip[: len(seg)] = seg
        clip = np.pad(clip, pad, mode="reflect")
        spec = librosa.stft(clip, n_fft=cfg.n_fft, hop_length=cfg.stft_hop, win_length=cfg.win_length,
                            window="hann", center=False)
        mel = basis @ np.abs(spec[:, 0])
        out.append((np.log(np.maximum(mel, 1e-5)) - np.log(1e-5)) / -np.log(1e-5))
    return np.array(out)


def test_mel_filterbank_equals_librosa():
    import librosa

    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=90, fmax=7600)
    np.testing.assert_allclose(mel_filterbank(16000, 512, 80, 90, 7600), ref, atol=1e-7)


def test_mel_matches_independent_reference(speech):
    cfg = MelConfig()
    ours = LogMel(cfg)(speech)
    ref = librosa_reference(speech, cfg)
    assert ours.shape == (2 * int(len(speech) / 16000 * 60), 80) == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert ours.min() >= 0 and ours.std() > 0.05  # floor at 0, real spectral content


def test_mel_equals_framewise_torch_loop(speech):
    with pytest.raises(InputError, match="window"):
        LogMel(MelConfig(fps=25))  # a 640-sample window does not fit the 512-point FFT
    cfg = MelConfig(fps=50)  # another model rate: hop 160, window 320
    np.testing.assert_allclose(LogMel(cfg)(speech[:16000]), log_mel_framewise(speech[:16000], cfg), atol=2e-5)


def test_mel_range_is_streamable(speech):
    mel = LogMel()
    full = mel(speech)
    np.testing.assert_array_equal(np.concatenate([mel(speech, 0, 37), mel(speech, 37, len(full))]), full)


@pytest.mark.parametrize("rate,channels,fmt", [(44100, 2, "WAV"), (48000, 1, "FLAC"), (16000, 1, "OGG")])
def test_load_audio_any_rate_and_channels(tmp_path, speech, rate, channels, fmt):
    import soxr

    data = soxr.resample(speech, 16000, rate)
    data = np.stack([data, 0.5 * data], 1) if channels == 2 else data
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, data, rate, format=fmt)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(speech)) <= 16
    ref = speech * (0.75 if channels == 2 else 1.0)
    n = min(len(out), len(ref)) - 200
    assert np.corrcoef(out[100:n], ref[100:n])[0, 1] > 0.99


def test_load_audio_mp3_and_m4a(tmp_path):
    for ext, codec in (("mp3", "libmp3lame"), ("m4a", "aac")):
        path = tmp_path / f"x.{ext}"
        proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(FIXTURES / "speech_3s.wav"),
                               "-c:a", codec, "-ar", "44100", "-ac", "2", str(path)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"bundled ffmpeg cannot encode {codec}")
        out = load_audio(path)
        assert abs(len(out) / 16000 - 3.0) < 0.1


def test_load_audio_errors(tmp_path):
    with pytest.raises(MissingFileError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(InputError, match="bad.wav: cannot be decoded"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0), 16000)
    with pytest.raises(InputError, match="empty.wav: contains no audio samples"):
        load_audio(empty)
