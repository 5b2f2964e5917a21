"""Lip sync and mouth quality without learned weights: audio-visual offset, mouth closure in silence, mouth crops.

SyncNet's weights cannot be obtained everywhere, so the offset is measured here from signals every clip has:

* visual: the mouth opening per video frame (N,), e.g. ``util.metrics.mouth_opening`` of re-tracked landmarks;
* audio: the loudness of the 1-3 kHz band in dB, in a 40 ms window centred on each frame's time. Of the
  bands tried on nine real clips (80-8000, 300-3000, 300-1000, 1000-3000 Hz, and onset strength), it
  followed the opening best: mean confidence 0.45 against 0.36 for 300-3000 Hz.

Both are band-passed to the syllable rate (2-8 Hz: slower drifts of pose and loudness, and faster tracker
jitter, carry no sync information) with a zero-phase filter, so the filtering itself shifts nothing, and
z-scored. Their Pearson correlation is computed for every lag within +-0.5 s; the lag of the peak is the
offset and, as SyncNet's confidence does (Chung & Zisserman 2016), the peak minus the median of that curve
is the confidence: near 0 for silence, noise or someone else's speech, about 0.3-0.6 for real talking video.

Sign convention: a POSITIVE offset means the mouth moves AFTER the sound (the video is late, or the audio
early); delaying the audio by k frames moves the offset by -k frames.

Calibration: in natural speech the mouth opens ahead of the sound it shapes, so the raw correlation peaks
with the mouth about 2 frames (80 ms) early. That lead was measured on nine real talking clips of
../shared/data/video (raw peaks at -1.0 to -3.3 frames of 25 fps, one clip at -6.3; median -2.0, and the
leave-one-out median stays within 1.75-2.45 frames). Like SyncNet, whose zero is whatever its synchronised
training videos show, offsets here are reported relative to that natural lead (`NATURAL_LEAD_S`), so
real synchronised video reads about 0 ms; pass ``natural_lead_s=0`` for the raw lag.

Length matters: the syllable rhythm gives side peaks about 250-350 ms from the main one. On windows cut
from those clips, the offset agreed within 1 frame with the whole clip's in 86 % of 4 s windows, 95 % of
6 s and all 10 s ones; the confidence of matched speech beat that of another clip's speech with
probability 0.93 at 6 s, 0.99 at 10 s and 1.0 at 20 s. Compare confidences between clips of equal length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.signal import butter, sosfiltfilt

from models.evaluation.metrics import psnr
from util.audio import SAMPLE_RATE
from util.errors import InputError
from util.landmarks import LIPS, MOUTH_MARGIN, mouth_box

SYNC_BAND_HZ = (1000.0, 3000.0)  # audio band whose loudness follows the opening best (tested against 300-3000)
SPEECH_BAND_HZ = (300.0, 3000.0)  # telephone band: where speech is told from silence
ENVELOPE_WINDOW_S = 0.04  # one 25 fps frame of audio per loudness value, at any frame rate
SYLLABLE_RATE_HZ = (2.0, 8.0)  # band-pass of both signals: syllables come at about 4-5 per second
FILTER_ORDER = 2  # Butterworth order (doubled by the zero-phase forward-backward pass)
NYQUIST_MARGIN = 0.45  # the band's upper edge is kept below 0.45 x fps for low frame rates
NATURAL_LEAD_S = 0.08  # the mouth leads the 1-3 kHz loudness by this much in synchronised speech (see above)
MAX_OFFSET_S = 0.5
SPEECH_LEVEL_PERCENTILE = 95  # the clip's speech level: the loudness exceeded by 5 % of frames
ENVELOPE_RANGE_DB = 40.0  # loudness below speech level - 40 dB is clipped: noise in pauses is not a signal
SILENCE_DB = 25.0  # frames quieter than speech level - 25 dB are quiet
DIGITAL_SILENCE_DBFS = -70.0  # frames below this are silent whatever the clip's level (quiet speech: -40..-20)
MIN_PAUSE_S = 0.3  # shorter quiet runs are gaps between syllables or stop closures, not pauses
SPEECH_MARGIN_S = 0.15  # the mouth prepares before and relaxes after speech: frames this close are not silent
POWER_FLOOR = 1e-12  # keeps log10 finite on digital silence
MIN_OVERLAP_S = 1.0  # each lag's correlation uses at least this much overlap
FRAMES_PER_BLOCK = 4096  # loudness frames analysed at once
FLAT_TOLERANCE = 1e-9  # a filtered series this small against the series' magnitude is flat (silence)
MOUTH_METRICS = ("mouth_psnr", "mouth_sharpness_ours", "mouth_sharpness_real")  # metrics.json names, in the
# order of `mouth_crop_scores` (fake = ours first)

log = logging.getLogger("lsp")


@dataclass(frozen=True)
class SyncResult:
    """Audio-visual offset of one clip (sign: positive = the mouth moves after the sound).

    Attributes:
        offset_ms: the peak's lag, refined between frames, in ms (calibrated: 0 = natural synchrony).
        offset_frames: the same, rounded to whole video frames.
        confidence: peak minus median of `curve` (0 for a flat curve, e.g. silence).
        curve: (2K+1,) correlation per lag of -K..K frames (K = max_offset_s x fps), lag = mouth minus sound.
        peak_correlation: the correlation at the peak.
    """

    offset_ms: float
    offset_frames: int
    confidence: float
    curve: np.ndarray
    peak_correlation: float


def band_loudness_db(audio: np.ndarray, fps: float, n_frames: int, band: tuple[float, float] = SYNC_BAND_HZ,
                     sample_rate: int = SAMPLE_RATE, window_s: float = ENVELOPE_WINDOW_S,
                     shift_s: float = 0.0) -> np.ndarray:
    """Mean-square level (dB full scale) of `band` in a Hann window centred on each frame's time.

    Frame i is analysed at time i / fps + shift_s; audio outside the clip counts as silence.
    Args:
        audio: (S,) mono float in [-1, 1] at `sample_rate`.
    Returns:
        (n_frames,) float64 dBFS (a full-scale sine in the band reads about -3).
    """
    win = max(2, round(window_s * sample_rate))
    n_fft = 1 << int(np.ceil(np.log2(win)))
    audio = np.concatenate([np.zeros(win), np.asarray(audio, np.float64), np.zeros(win)])  # silence around
    window = np.hanning(win)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    sel = (freqs >= band[0]) & (freqs <= band[1])
    out = np.empty(n_frames)
    for first in range(0, n_frames, FRAMES_PER_BLOCK):  # blocks bound the memory for long audio
        frames = np.arange(first, min(first + FRAMES_PER_BLOCK, n_frames))
        centres = np.round((frames / fps + shift_s) * sample_rate).astype(np.int64) + win
        idx = np.clip(centres[:, None] + np.arange(win)[None, :] - win // 2, 0, len(audio) - 1)  # (F, win)
        spec = np.abs(np.fft.rfft(audio[idx] * window, n_fft, axis=1)) ** 2  # (F, n_fft/2+1)
        # Parseval: one-sided band power over the window's energy is the band's mean square.
        out[frames] = 2.0 * spec[:, sel].sum(1) / (n_fft * np.sum(window**2))
    return 10.0 * np.log10(out + POWER_FLOOR)


def speech_level_db(loudness_db: np.ndarray) -> float:
    """The clip's speech level: the loudness exceeded by the loudest 5 % of frames."""
    return float(np.percentile(loudness_db, SPEECH_LEVEL_PERCENTILE))


def syllable_band(x: np.ndarray, fps: float) -> np.ndarray:
    """Zero-phase band-pass of a per-frame series (N,) to the syllable rate, z-scored (zeros when flat)."""
    hi = min(SYLLABLE_RATE_HZ[1], NYQUIST_MARGIN * fps)
    sos = butter(FILTER_ORDER, [SYLLABLE_RATE_HZ[0], hi], btype="band", fs=fps, output="sos")
    x = np.asarray(x, np.float64)
    y = sosfiltfilt(sos, x - x.mean())
    std = y.std()
    return (y - y.mean()) / std if std > FLAT_TOLERANCE * (np.abs(x).max() + POWER_FLOOR) else np.zeros_like(y)


def lagged_correlation(visual: np.ndarray, sound: np.ndarray, max_lag: int) -> np.ndarray:
    """Pearson correlation of visual[t + lag] with sound[t] for lag = -max_lag..max_lag: (2 max_lag + 1,).

    Each lag uses only the overlapping frames; a constant overlap gives 0.
    """
    out = np.zeros(2 * max_lag + 1)
    n = min(len(visual), len(sound))
    for k, lag in enumerate(range(-max_lag, max_lag + 1)):
        a = visual[max(lag, 0) : n + min(lag, 0)]
        b = sound[max(-lag, 0) : n - max(lag, 0)]
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        out[k] = (a * b).sum() / den if den > 0 else 0.0
    return out


def _refine_peak(curve: np.ndarray, k: int) -> float:
    """Sub-frame position of the maximum at index k by a parabola through its neighbours."""
    if 0 < k < len(curve) - 1:
        a, b, c = curve[k - 1], curve[k], curve[k + 1]
        den = a - 2 * b + c
        if den < 0:
            return k + 0.5 * (a - c) / den
    return float(k)


def sync_offset(opening: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int = SAMPLE_RATE,
                max_offset_s: float = MAX_OFFSET_S, natural_lead_s: float = NATURAL_LEAD_S) -> SyncResult:
    """Audio-visual offset and confidence of a mouth-opening series and its audio.

    Args:
        opening: (N,) mouth opening per video frame (any unit), frame i shown at time i / fps.
        audio: (S,) mono float at `sample_rate`, sample 0 at time 0.
        fps: video frame rate (25, 30, 60, ...).
        max_offset_s: lags searched on each side.
        natural_lead_s: the mouth's natural lead over the sound, reported as 0 (module docstring).
    Returns:
        SyncResult; positive offsets mean the mouth moves after the sound.
    """
    opening = np.asarray(opening, np.float64)
    if opening.ndim != 1:
        raise InputError(f"sync_offset: opening must be a series (N,), got shape {opening.shape}")
    max_lag = round(max_offset_s * fps)
    if len(opening) < 2 * max_lag + MIN_OVERLAP_S * fps:
        raise InputError(f"sync_offset: {len(opening)} frames at {fps:g} fps are too few for lags of "
                         f"+-{max_offset_s:g} s; need at least {2 * max_offset_s + MIN_OVERLAP_S:g} s")
    if not np.all(np.isfinite(opening)):
        raise InputError("sync_offset: the mouth opening holds NaN or infinite values (fill tracking gaps first)")
    # The sound a frame's mouth shape belongs to is heard natural_lead_s later.
    loud = band_loudness_db(audio, fps, len(opening), SYNC_BAND_HZ, sample_rate, shift_s=natural_lead_s)
    loud = np.maximum(loud, max(speech_level_db(loud) - ENVELOPE_RANGE_DB, DIGITAL_SILENCE_DBFS))
    curve = lagged_correlation(syllable_band(opening, fps), syllable_band(loud, fps), max_lag)
    k = int(np.argmax(curve))
    lag = _refine_peak(curve, k) - max_lag
    return SyncResult(offset_ms=1000.0 * lag / fps, offset_frames=round(lag), confidence=float(curve[k] -
                      np.median(curve)), curve=curve, peak_correlation=float(curve[k]))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a boolean series, end exclusive."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def silence_mask(audio: np.ndarray, fps: float, n_frames: int, sample_rate: int = SAMPLE_RATE,
                 silence_db: float = SILENCE_DB, min_pause_s: float = MIN_PAUSE_S,
                 margin_s: float = SPEECH_MARGIN_S) -> np.ndarray:
    """Video frames (n_frames,) whose audio is a pause in speech.

    A frame is quiet when its 300-3000 Hz loudness is `silence_db` below the clip's speech level (or below
    digital silence); quiet runs shorter than `min_pause_s` (gaps between syllables) are not pauses, and
    the `margin_s` next to speech on either side is not silent either (the mouth opens before the sound
    and closes after it). A clip of digital silence is silent throughout.
    """
    loud = band_loudness_db(audio, fps, n_frames, SPEECH_BAND_HZ, sample_rate)
    quiet = (loud < speech_level_db(loud) - silence_db) | (loud < DIGITAL_SILENCE_DBFS)
    margin = round(margin_s * fps)
    mask = np.zeros(n_frames, bool)
    for start, end in _runs(quiet):
        if end - start >= min_pause_s * fps:
            mask[start + (margin if start > 0 else 0) : end - (margin if end < n_frames else 0)] = True
    return mask


def silence_opening(opening: np.ndarray, mask: np.ndarray, scale: float) -> float:
    """Mean mouth opening over the silent frames, divided by `scale`; NaN when no frame is silent.

    We pass the track's mean face width (contour point 0 to 14) as `scale`, so the figure is the opening
    as a fraction of the face width, comparable between videos tracked at different sizes. A closed
    mouth reads about 0; the real TedLieu held-out tail reads 0.027 in speech and 0.034 in its pauses,
    where the speaker breathes through the mouth, so lower is not always more real.
    """
    opening, mask = np.asarray(opening, np.float64), np.asarray(mask, bool)
    n = min(len(opening), len(mask))
    if not mask[:n].any():
        return float("nan")
    if not scale > 0:
        raise InputError(f"silence_opening: scale must be positive, got {scale}")
    return float(opening[:n][mask[:n]].mean() / scale)


def mouth_crop(img: np.ndarray, landmarks2d_mouth: np.ndarray, margin: float = MOUTH_MARGIN) -> np.ndarray:
    """The square mouth region (s, s[, C]) of an image (H, W[, C]), from its mouth points (P, 2) in pixels.

    Pass the lips, ``pts2d[LIPS]`` of the 73-point layout; the jaw would make the box much larger.
    """
    x0, y0, x1, y1 = mouth_box(landmarks2d_mouth, img.shape, margin)
    return img[y0:y1, x0:x1]


def mouth_sharpness(crop: np.ndarray) -> float:
    """Gradient energy: mean squared Sobel gradient magnitude of the gray crop (0-255 units per pixel)."""
    gray = crop if crop.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    gray = gray.astype(np.float64)
    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)
    return float(np.mean(gx * gx + gy * gy))


def mouth_psnr(fake: np.ndarray, real: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """PSNR (dB) of the mouth box (x0, y0, x1, y1) of two aligned images (H, W[, C]); inf when identical."""
    x0, y0, x1, y1 = box
    return psnr(fake[y0:y1, x0:x1], real[y0:y1, x0:x1])


def mouth_crop_scores(fake: np.ndarray, real: np.ndarray, pts2d: np.ndarray) -> tuple[float, float, float]:
    """(mouth PSNR, sharpness of fake, sharpness of real) of two aligned frames (H, W, 3).

    The box comes from the real frame's 73 landmarks (73, 2) in pixels. That is fair for frames rendered
    from those same landmarks: both mouths sit in the same place, so one box crops both.
    """
    box = mouth_box(pts2d[LIPS], real.shape)
    x0, y0, x1, y1 = box
    return mouth_psnr(fake, real, box), mouth_sharpness(fake[y0:y1, x0:x1]), mouth_sharpness(real[y0:y1, x0:x1])


def summarize_mouth_scores(rows: np.ndarray) -> dict[str, float]:
    """Means over frames of `mouth_crop_scores` rows (F, 3), under the metrics.json names."""
    rows = np.asarray(rows, np.float64).reshape(-1, 3)
    return {name: float(rows[:, k].mean()) if len(rows) else float("nan") for k, name in enumerate(MOUTH_METRICS)}


def sync_and_silence(opening: np.ndarray, audio: np.ndarray, fps: float, scale: float, label: str,
                     sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """Offset, confidence and opening in silence of one video's mouth (N,) against its audio (S,).

    Returns {sync_offset_ms_<label>, sync_confidence_<label>, silence_opening_<label>}, the metrics.json
    names; the sync values are NaN (with a warning) when the clip is too short for the lag search.
    """
    keys = [f"sync_offset_ms_{label}", f"sync_confidence_{label}", f"silence_opening_{label}"]
    if not len(opening):
        log.warning("lip sync of %s not measured: no tracked frames", label)
        return dict.fromkeys(keys, float("nan"))
    try:
        sync = sync_offset(opening, audio, fps, sample_rate)
        offset, confidence = sync.offset_ms, sync.confidence
    except InputError as err:
        log.warning("lip sync of %s not measured: %s", label, err)
        offset = confidence = float("nan")
    mask = silence_mask(audio, fps, len(opening), sample_rate)
    return dict(zip(keys, (offset, confidence, silence_opening(opening, mask, scale))))
