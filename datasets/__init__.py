"""Dataset classes, pix2pix style: datasets/<name>_dataset.py defines <Name>Dataset (see util/registry.py),
plus the loader every stage trains with: deterministic per-epoch shuffling, DDP sharding, and a start
batch so that a resumed run continues an epoch exactly where it stopped."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def create_dataset(opt: argparse.Namespace, split: str = "train", spec: object = None) -> Dataset:
    """The dataset class registered as opt.dataset_mode, for one split, cut as the model's `spec` says."""
    from util import registry

    return registry.find("dataset", opt.dataset_mode)(opt, split, spec)


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation fixed by (seed, epoch), this rank's share, from `start` on."""

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.shuffle, self.seed, self.rank, self.world = size, shuffle, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = math.ceil(self.size / self.world)
        order += order[: per_rank * self.world - self.size]  # every rank gets as many samples
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(0, math.ceil(self.size / self.world) - self.start)


def create_loader(dataset: Dataset, opt: argparse.Namespace, train: bool, epoch: int = 0, start_batch: int = 0,
                  rank: int = 0, world: int = 1) -> DataLoader:
    """The loader of one epoch, starting at batch `start_batch` of this rank's share.

    The loader's own generator (seeded by seed and epoch) seeds the workers, so making a loader does
    not consume the global RNG: a resumed run draws the same dropout noise as an uninterrupted one.
    """
    sampler = EpochSampler(len(dataset), train and not opt.serial_batches, opt.seed, rank, world)
    sampler.set_epoch(epoch, start_batch * opt.batch_size)
    return DataLoader(dataset, batch_size=opt.batch_size, sampler=sampler, drop_last=False,
                      num_workers=opt.num_threads if train else 0, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(opt.seed * 7919 + epoch))
