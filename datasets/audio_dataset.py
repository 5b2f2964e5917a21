"""Speech for APC pre-training: log-mel segments from every audio file under one or more folders.

--dataroot takes folders (or files) separated by commas; every .wav/.flac/.mp3/.ogg/.m4a below them
is decoded to 16 kHz mono once and turned into the LSP log-mel (util/audio.py). Segments of
`segment_length` frames tile each file without crossing files; every 20th file is held out for
validation.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.base_dataset import BaseDataset
from util.audio import LogMel, MelConfig, load_audio
from util.errors import InputError

log = logging.getLogger("lsp")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
VAL_EVERY = 20  # one file in VAL_EVERY goes to the validation split


def audio_files(dataroot: str) -> list[Path]:
    """Every audio file under the comma-separated folders/files of --dataroot, sorted."""
    files: list[Path] = []
    for part in [p.strip() for p in str(dataroot).split(",") if p.strip()]:
        path = Path(part)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            raise InputError(f"--dataroot {part}: no such file or folder (expected folders of speech audio)")
    return files


class AudioDataset(BaseDataset):
    """Mel segments (segment_length, 80) of speech, for --model apc."""

    def __init__(self, opt: argparse.Namespace, split: str = "train", spec: int | None = None) -> None:
        super().__init__(opt, split)
        if not opt.dataroot:
            raise InputError("--dataroot is required for --model apc: folder(s) of speech audio, comma-separated")
        self.segment = int(spec or 480)
        files = audio_files(opt.dataroot)
        if not files:
            raise InputError(f"--dataroot {opt.dataroot}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
        if len(files) >= VAL_EVERY:
            files = [f for i, f in enumerate(files) if (i % VAL_EVERY == VAL_EVERY - 1) == (split == "val")]
        elif split == "val":
            files = []
        mel = LogMel(MelConfig(fps=opt.fps))
        self.mels, self.index = [], []
        files = files[:10] if getattr(opt, "debug", False) else files
        for f in tqdm(files, desc=f"mel ({split})", unit="file", disable=not files):
            m = mel(load_audio(f))
            if len(m) < self.segment:
                continue
            self.index += [(len(self.mels), s) for s in range(0, len(m) - self.segment + 1, self.segment)]
            self.mels.append(m)
        self.index = self.limit(self.index)
        if split == "train" and not self.index:
            raise InputError(f"--dataroot {opt.dataroot}: no file holds a {self.segment}-frame segment "
                             f"({self.segment / (2 * opt.fps):.1f} s of speech)")
        log.info("APC %s data: %d files, %d segments of %d mel frames", split, len(self.mels), len(self.index),
                 self.segment)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f, s = self.index[i]
        return {"mel": torch.from_numpy(np.ascontiguousarray(self.mels[f][s : s + self.segment]))}
