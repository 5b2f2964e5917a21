"""Lip-sync scores LSE-D / LSE-C (Prajwal et al. 2020) with the SyncNet of Chung & Zisserman (2016),
from the weight file the user already has (`syncnet_v2.model` of the syncnet_python release).

The procedure is the field's usual one: the video at 25 fps, a square crop around the face resized
to 224² (BGR, 0-255), 13 MFCCs at 100 Hz of the 16 kHz audio in 16-bit units (python_speech_features'
defaults), one embedding per 5 video frames and per matching 20 MFCC frames, then for offsets of
-15..15 video frames the mean distance between the two streams. LSE-D is the smallest mean
distance, LSE-C the median minus that smallest (the confidence), and the offset is where it lies.
One deliberate difference: the face box comes from our MediaPipe tracker (the box of the face
mesh) instead of the S3FD detector, so the numbers are close to, not identical with, published ones.
Everything here is written from the description above; nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.fft import dct
from scipy.signal import medfilt
from torch import nn

from util.audio import SAMPLE_RATE
from util.checkpoint import load_state_dict_file, load_strict
from util.errors import InputError
from util.video import VideoReader

FPS = 25.0
CROP = 224
WINDOW = 5  # video frames per embedding
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
VSHIFT = 15  # offsets searched, in video frames
CROP_SCALE = 0.4  # context around the face box, as the syncnet pipeline crops
PAD_VALUE = 110
BOX_SMOOTHING = 13  # median filter length over the box track


def _conv_bn(conv: nn.Module, bn: nn.Module, *pool: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(), *pool]


class SyncNet(nn.Module):
    """Audio (B, 1, 13, 20) MFCC and lips (B, 3, 5, 224, 224) BGR -> (B, 1024) embeddings each."""

    def __init__(self, embed: int = 1024) -> None:
        super().__init__()
        b2, b3 = nn.BatchNorm2d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(
            *_conv_bn(nn.Conv2d(1, 64, 3, padding=1), b2(64), nn.MaxPool2d(1, 1)),
            *_conv_bn(nn.Conv2d(64, 192, 3, padding=1), b2(192), nn.MaxPool2d(3, (1, 2))),
            *_conv_bn(nn.Conv2d(192, 384, 3, padding=1), b2(384)),
            *_conv_bn(nn.Conv2d(384, 256, 3, padding=1), b2(256)),
            *_conv_bn(nn.Conv2d(256, 256, 3, padding=1), b2(256), nn.MaxPool2d(3, 2)),
            *_conv_bn(nn.Conv2d(256, 512, (5, 4)), b2(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed))
        self.netcnnlip = nn.Sequential(
            *_conv_bn(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), b3(96), nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_bn(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), b3(256),
                      nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256)),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256)),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256), nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_bn(nn.Conv3d(256, 512, (1, 6, 6)), b3(512)),
        )

    def forward_audio(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lips(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))

    @classmethod
    def from_file(cls, path: Path) -> SyncNet:
        """Strict load of a syncnet_python state dict (BatchNorm counters may be absent)."""
        state = load_state_dict_file(path, "--syncnet_ckpt", strip=("module.", "__S__."))
        net = cls()
        counters = {k: v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")}
        load_strict(net, {**counters, **state}, path, "--syncnet_ckpt")
        return net.eval()


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def mel_filters(n_filters: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Triangular filters on FFT bins, spaced evenly in mel from 0 Hz to Nyquist: (n_filters, n_fft // 2 + 1)."""
    top = 2595 * np.log10(1 + (sample_rate / 2) / 700)
    hz = 700 * (10 ** (np.linspace(0, top, n_filters + 2) / 2595) - 1)
    bins = np.floor((n_fft + 1) * hz / sample_rate).astype(int)
    fb = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        fb[j, lo:mid] = (np.arange(lo, mid) - lo) / (mid - lo)
        fb[j, mid:hi] = (hi - np.arange(mid, hi)) / (hi - mid)
    return fb


def mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, n_ceps: int = 13, n_filters: int = 26, n_fft: int = 512,
         win: float = 0.025, step: float = 0.01, preemph: float = 0.97, lifter: int = 22) -> np.ndarray:
    """MFCCs (T, n_ceps) at 100 Hz with the conventions of python_speech_features: pre-emphasis,
    rectangular 25 ms frames (zero-padded at the end), power spectrum / n_fft, log mel energies, DCT-II
    (orthonormal), sinusoidal liftering, and c0 replaced by the log frame energy."""
    x = np.asarray(audio, np.float64)
    x = np.append(x[:1], x[1:] - preemph * x[:-1])
    flen, fstep = _round_half_up(win * sample_rate), _round_half_up(step * sample_rate)
    n = 1 if len(x) <= flen else 1 + math.ceil((len(x) - flen) / fstep)
    x = np.concatenate([x, np.zeros((n - 1) * fstep + flen - len(x))])
    frames = x[np.arange(flen)[None] + fstep * np.arange(n)[:, None]]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    eps = np.finfo(float).eps
    energy = power.sum(1)
    feat = power @ mel_filters(n_filters, n_fft, sample_rate).T
    feat = dct(np.log(np.where(feat == 0, eps, feat)), type=2, axis=1, norm="ortho")[:, :n_ceps]
    feat *= 1 + (lifter / 2) * np.sin(np.pi * np.arange(n_ceps) / lifter)
    feat[:, 0] = np.log(np.where(energy == 0, eps, energy))
    return feat


def face_crops(frames: list[np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """RGB frames and per-frame face boxes (cx, cy, half size) in pixels -> (T, 224, 224, 3) BGR crops.

    The box track is median-filtered; each crop spans the box plus CROP_SCALE of context (more below
    the face than above, to keep the chin), padded with grey outside the frame."""
    k = min(BOX_SMOOTHING, len(boxes) - (1 - len(boxes) % 2))
    smooth = np.stack([medfilt(boxes[:, i], max(1, k)) for i in range(3)], 1) if k > 1 else boxes
    out = []
    for rgb, (cx, cy, s) in zip(frames, smooth):
        pad = int(s * (1 + 2 * CROP_SCALE))
        img = cv2.copyMakeBorder(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), pad, pad, pad, pad,
                                 cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
        y, x = cy + pad, cx + pad
        face = img[int(y - s) : int(y + s * (1 + 2 * CROP_SCALE)), int(x - s * (1 + CROP_SCALE)) :
                   int(x + s * (1 + CROP_SCALE))]
        out.append(cv2.resize(face, (CROP, CROP)))
    return np.stack(out)


def face_boxes(frames: list[np.ndarray]) -> np.ndarray:
    """(T, 3) face boxes (centre x, centre y, half size) in pixels from the MediaPipe tracker; frames
    without a face are filled from their neighbours."""
    from datasets.preprocessing.tracker import track_frames
    from datasets.preprocessing.tracks import fill_gaps

    track = track_frames(frames, FPS, total=len(frames), desc="face boxes")
    if not track.valid.any():
        raise InputError("lip-sync score: no face found in the video")
    h, w = frames[0].shape[:2]
    pts = np.nan_to_num(track.landmarks[..., :2]) * [w, h]  # (T, 478, 2) pixels
    lo, hi = pts.min(1), pts.max(1)
    boxes = np.concatenate([(lo + hi) / 2, (hi - lo).max(1, keepdims=True) / 2], 1)
    return fill_gaps(boxes, track.valid)


@torch.no_grad()
def lse(net: SyncNet, crops: np.ndarray, audio: np.ndarray, batch: int = 20) -> dict[str, float]:
    """LSE-D, LSE-C and the AV offset of (T, 224, 224, 3) BGR crops at 25 fps and their 16 kHz audio."""
    device = next(net.parameters()).device
    cc = mfcc(np.asarray(audio, np.float64) * 32768.0)  # the syncnet tools read 16-bit samples unscaled
    n = min(len(crops), len(audio) * int(FPS) // SAMPLE_RATE) - WINDOW  # windows, as the syncnet tools count them
    if n < 2 * VSHIFT + 1:
        raise InputError(f"lip-sync score: {len(crops) / FPS:.1f} s of video is too short; need at least "
                         f"{(2 * VSHIFT + 1 + WINDOW) / FPS:.1f} s")
    video = torch.from_numpy(crops).float().permute(3, 0, 1, 2)  # (3, T, H, W)
    mf = torch.from_numpy(cc.T.copy()).float()  # (13, T_mfcc)
    lips, auds = [], []
    for start in range(0, n, batch):
        idx = range(start, min(n, start + batch))
        lips.append(net.forward_lips(torch.stack([video[:, i : i + WINDOW] for i in idx]).to(device)).cpu())
        a = torch.stack([mf[None, :, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + 4 * WINDOW] for i in idx])
        auds.append(net.forward_audio(a.to(device)).cpu())
    v, a = torch.cat(lips), torch.cat(auds)
    a_pad = torch.nn.functional.pad(a, (0, 0, VSHIFT, VSHIFT))
    offsets = 2 * VSHIFT + 1
    dists = torch.stack([torch.nn.functional.pairwise_distance(v[i : i + 1].expand(offsets, -1),
                                                               a_pad[i : i + offsets]) for i in range(n)])
    mean = dists.mean(0)  # (offsets,)
    best = int(mean.argmin())
    return {"lse_d": float(mean[best]), "lse_c": float(mean.median() - mean[best]), "offset_frames": VSHIFT - best,
            "windows": n}


def score_frames(net: SyncNet, frames: list[np.ndarray], fps: float, audio: np.ndarray) -> dict[str, float]:
    """LSE-D / LSE-C of RGB frames at `fps` against `audio` (16 kHz mono, starting with the first frame);
    the frames are resampled to 25 fps (nearest in time) first."""
    n = int(len(frames) / fps * FPS)
    frames = [frames[min(len(frames) - 1, round(k * fps / FPS))] for k in range(n)]
    return lse(net, face_crops(frames, face_boxes(frames)), audio)


def score_video(net: SyncNet, video: Path, audio: np.ndarray) -> dict[str, float]:
    """LSE-D / LSE-C of a talking-head video file against `audio`."""
    reader = VideoReader(video)
    return score_frames(net, list(reader), reader.fps, audio)
