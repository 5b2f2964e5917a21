"""Frames for Feature2Face: the real crop, its feature map (tracked landmarks and shoulders), the
identity's 4 candidate images (LSP §4.1) and the box of the mouth (for the mouth-weighted loss).
Interpolated frames (no face found) are left out.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from datasets.base_dataset import BaseDataset, identity_files
from util.argtypes import positive_int
from util.errors import InputError
from util.io import load_npz
from util.landmarks import LIPS, feature_map, mouth_box


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1.0


class FaceDataset(BaseDataset):
    """(feature_map, candidates, image) triples from the clips of one split."""

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        parser.add_argument("--frame_jump", type=positive_int, default=1, help="use every n-th frame")
        return parser

    def __init__(self, opt: argparse.Namespace, split: str = "train", spec: object = None) -> None:
        super().__init__(opt, split)
        self.files = identity_files(opt)
        self.root = self.files.root
        cands = self.files.load_candidates()
        self.size = cands.shape[1:3]
        self.candidates = torch.cat([to_tensor(c) for c in cands])  # (12, H, W)
        self.clips, self.index = {}, []
        for name in self.files.clips(split):
            tracks = load_npz(self.files.clip(name).tracks, "clip tracks", ("pts2d", "shoulders2d", "valid"))
            self.clips[name] = tracks
            valid = np.flatnonzero(tracks["valid"])
            self.index += [(name, int(j)) for j in valid[:: opt.frame_jump]]
        self.index = self.limit(self.index)
        if split == "train" and not self.index:
            raise InputError(f"--dataroot {self.root}: no training frames with a tracked face")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        name, j = self.index[i]
        path = self.files.clip(name).frame(j)
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"{path}: missing or unreadable frame (re-run scripts/preprocess.py --force)")
        tracks = self.clips[name]
        fmap = feature_map(tracks["pts2d"][j], tracks["shoulders2d"][j], self.size)
        return {"feature_map": torch.from_numpy(fmap)[None].float() / 255.0, "candidates": self.candidates,
                "image": to_tensor(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)),
                "mouth_box": torch.tensor(mouth_box(tracks["pts2d"][j][LIPS], self.size))}  # (x0, y0, x1, y1)
