"""torch.distributed set-up for torchrun: one code path for 1..N processes, CPU (gloo) or CUDA (nccl)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def rank_device(gpu_ids: list[int]) -> torch.device:
    """The device of this process: the CPU without GPU ids; else the local rank's GPU.

    With one id (the default `--gpu_ids 0`) local rank k takes GPU id + k, so `torchrun --nproc_per_node N`
    puts every rank on its own GPU; with a list of ids, local rank k takes the k-th of them.
    """
    if not gpu_ids:
        return torch.device("cpu")
    local = world_info()[2]
    if len(gpu_ids) == 1:
        return torch.device(f"cuda:{gpu_ids[0] + local}")
    if local >= len(gpu_ids):
        raise ValueError(f"--gpu_ids {','.join(map(str, gpu_ids))}: local rank {local} has no GPU in the list")
    return torch.device(f"cuda:{gpu_ids[local]}")


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when WORLD_SIZE > 1 (nccl on `device` when it is a GPU); returns (rank, world)."""
    rank, world, _ = world_info()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world


def is_distributed() -> bool:
    """Whether this process is one of several joined by torch.distributed."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
