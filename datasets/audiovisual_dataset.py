"""Windows of APC features aligned with mouth and head-pose targets, for audio2feature and audio2headpose.

Per clip (at the model rate, 60 fps) preprocessing wrote tracks_<fps>fps.npz (pose-free landmarks,
rotation, translation) and, once APC exists, apc_features.npy (two 120 Hz frames per video frame).
A window of `length` target frames starting at frame s carries (LSP §4.1, made exact):
  audio_feats  APC of video frames [s - history + lookahead, s + length + lookahead)   (2 per frame)
  history      normalised pose of frames [s - history - 1, s + length - 1)             (zeros before 0)
  target       normalised pose of frames [s, s + length)
  mouth        25 mouth points minus the identity's mean shape, frames [s, s + length)
Frames before the clip start take zero pose and the first audio frame, after the end the last audio
frame: exactly what inference does at the start and end of an utterance.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from datasets.base_dataset import BaseDataset, identity_files
from datasets.identity import IdentityFiles
from util.argtypes import positive_int
from util.audio import MEL_PER_VIDEO_FRAME
from util.errors import InputError, MissingFileError
from util.geometry import normalise_pose
from util.io import load_array, load_npz
from util.landmarks import MOUTH, NUM_POINTS


@dataclass(frozen=True)
class WindowSpec:
    """What a model needs around its target frames (asked of the model, not of the options)."""

    length: int  # target frames per window
    history: int = 0  # frames of context before the first target (receptive field - 1 for the WaveNet)
    lookahead: int = 0  # frames of audio beyond each frame's own (the pose model's frame_future)
    apc_dim: int = 512  # feature size the model was built for


def identity_apc_dim(opt: argparse.Namespace) -> int:
    """Size of the identity's APC features (APC_feature_base.npy), for --apc_hidden_size 0 (auto)."""
    return identity_files(opt).apc_dim()


def training_pose(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """A clip's pose as the pose model learns it: normalised (translation minus the clip's mean, LSP §4.1)
    and its velocities: (N, 12)."""
    pose = normalise_pose(rot, trans, trans.mean(0))
    vel = np.concatenate([np.zeros((1, pose.shape[1])), np.diff(pose, axis=0)])
    return np.concatenate([pose, vel], 1).astype(np.float32)


def load_clip(files: IdentityFiles, name: str, fps: float, apc_dim: int | None = None,
              mean_mouth: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One clip at the model rate: 'apc' (n, 2 * d) feature pairs, 'pose' (n, 12) as the pose model learns
    it and, given the identity's mean mouth, 'mouth' (n, 75) displacements."""
    clip = files.clip(name)
    tracks = load_npz(clip.model_tracks(fps), "model-rate tracks", ("pts3d", "rot", "trans"),
                      f" (re-run scripts/preprocess.py --id {files.root.name} --fps {fps:g})")
    apc_path = clip.apc_features
    if not apc_path.is_file():
        raise MissingFileError(f"{apc_path} not found: this identity has no APC features yet; make them with "
                               f"python scripts/preprocess.py --id {files.root.name} --only apc_features "
                               "--apc_ckpt <APC checkpoint>")
    apc = load_array(apc_path, "APC features", (-1, -1))
    if apc_dim is not None and apc.shape[1] != apc_dim:
        raise InputError(f"{apc_path}: {apc.shape[1]}-d APC features, but the model was built for "
                         f"{apc_dim} (--apc_hidden_size; 0 takes the identity's size)")
    n = min(len(tracks["rot"]), len(apc) // MEL_PER_VIDEO_FRAME)
    out = {"apc": apc[: MEL_PER_VIDEO_FRAME * n].reshape(n, -1),
           "pose": training_pose(tracks["rot"][:n], tracks["trans"][:n])}
    if mean_mouth is not None:
        out["mouth"] = tracks["pts3d"][:n, MOUTH].reshape(n, -1).astype(np.float32) - mean_mouth
    return out


class AudiovisualDataset(BaseDataset):
    """Windows over the clips of one split of an identity; see the module docstring."""

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        parser.add_argument("--frame_jump_stride", type=positive_int, default=1, help="frames between window starts")
        return parser

    def __init__(self, opt: argparse.Namespace, split: str = "train", spec: WindowSpec | None = None) -> None:
        super().__init__(opt, split)
        if spec is None:
            raise ValueError("AudiovisualDataset needs the model's WindowSpec")
        self.spec = spec
        self.files = identity_files(opt)
        self.root = self.files.root
        mean = load_array(self.files.mean_pts3d, "mean 3D landmarks", (NUM_POINTS, 3))
        self.mean_mouth = mean[MOUTH].reshape(-1).astype(np.float32)
        self.clips = [self._load_clip(name) for name in self.files.clips(split)]
        self.index = self.limit([(c, s) for c, clip in enumerate(self.clips)
                                 for s in range(0, len(clip["pose"]) - spec.length + 1, opt.frame_jump_stride)])
        if split == "train" and not self.index:
            longest = max((len(c["pose"]) for c in self.clips), default=0)
            raise InputError(f"--dataroot {self.root}: no training window of {spec.length} frames; the longest clip "
                             f"has {longest} frames at {opt.fps:g} fps (shorten --sequence_length/--time_frame_length)")

    def _load_clip(self, name: str) -> dict[str, np.ndarray]:
        return load_clip(self.files, name, self.opt.fps, self.spec.apc_dim, self.mean_mouth)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, s = self.index[i]
        clip, spec = self.clips[c], self.spec
        n = len(clip["pose"])
        frames = np.arange(s - spec.history, s + spec.length)  # the window's positions
        audio = clip["apc"][np.clip(frames + spec.lookahead, 0, n - 1)]  # (H + T, 2 * 512)
        hist_idx = frames - 1
        history = np.where((hist_idx >= 0)[:, None], clip["pose"][np.clip(hist_idx, 0, n - 1)], 0.0)
        return {
            "audio_feats": torch.from_numpy(audio.reshape(-1, audio.shape[1] // MEL_PER_VIDEO_FRAME)),
            "history": torch.from_numpy(history.astype(np.float32)),
            "target": torch.from_numpy(clip["pose"][s : s + spec.length]),
            "mouth": torch.from_numpy(clip["mouth"][s : s + spec.length]),
        }
