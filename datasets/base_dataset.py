"""BaseDataset (pix2pix's contract) and what the identity datasets share: the identity folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch.utils.data

from datasets.identity import IdentityFiles
from util.errors import InputError, MissingFileError


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


def identity_files(opt: argparse.Namespace) -> IdentityFiles:
    """--dataroot as an identity folder made by scripts/preprocess.py, with a clear error otherwise."""
    if not opt.dataroot:
        raise InputError(f"--dataroot is required for --model {opt.model}: an identity folder made by "
                         "scripts/preprocess.py, e.g. data/<id>")
    files = IdentityFiles(opt.dataroot)
    if not files.root.is_dir():
        raise MissingFileError(f"--dataroot {files.root}: no such folder (expected an identity folder, data/<id>)")
    train_list = files.split_list("train")
    if not train_list.is_file():
        raise InputError(f"--dataroot {files.root}: no {train_list.name}; expected an identity folder made by "
                         f"python scripts/preprocess.py --video <video> --id {files.root.name}")
    return files


def identity_root(opt: argparse.Namespace) -> Path:
    """The identity folder of --dataroot (see identity_files)."""
    return identity_files(opt).root
