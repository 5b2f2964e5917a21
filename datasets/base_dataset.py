"""BaseDataset (pix2pix's contract) and what the identity datasets share: clip lists and clip files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch.utils.data

from util.errors import InputError, MissingFileError

SPLIT_LISTS = {"train": "train_list.txt", "val": "val_list.txt"}


class BaseDataset(torch.utils.data.Dataset):
    """A dataset built from options; `split` is 'train' or 'val'."""

    def __init__(self, opt: argparse.Namespace, split: str = "train") -> None:
        self.opt = opt
        self.split = split

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        """Add the dataset's own flags; the base adds none."""
        return parser

    def limit(self, items: list) -> list:
        """The first --max_dataset_size items (all by default); at most 10 with --debug."""
        n = getattr(self.opt, "max_dataset_size", None)
        if getattr(self.opt, "debug", False):
            n = min(n or 10, 10)
        return items[:n] if n else items


def identity_root(opt: argparse.Namespace) -> Path:
    """--dataroot as an identity folder made by scripts/preprocess.py, with a clear error otherwise."""
    if not opt.dataroot:
        raise InputError(f"--dataroot is required for --model {opt.model}: an identity folder made by "
                         "scripts/preprocess.py, e.g. data/<id>")
    root = Path(opt.dataroot)
    if not root.is_dir():
        raise MissingFileError(f"--dataroot {root}: no such folder (expected an identity folder, data/<id>)")
    if not (root / SPLIT_LISTS["train"]).is_file():
        raise InputError(f"--dataroot {root}: no {SPLIT_LISTS['train']}; expected an identity folder made by "
                         f"python scripts/preprocess.py --video <video> --id {root.name}")
    return root


def read_clips(root: Path, split: str) -> list[str]:
    """Clip names of a split from train_list.txt / val_list.txt (empty for a missing val list)."""
    path = root / SPLIT_LISTS[split]
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_npz(path: Path, hint: str = "") -> dict[str, np.ndarray]:
    """All arrays of an .npz, with an error naming the file (and how to make it) when it is missing."""
    if not path.is_file():
        raise MissingFileError(f"{path} not found{hint}")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
