"""torch.distributed for :func:`radvar.train.fit`: process group from torchrun's
environment, DistributedDataParallel, and per-rank data shards.

Each rank draws its own RAD stream (:func:`radvar.rng.next_key` mixes the
rank into every key), so the RAD noise of the ranks is independent and the
all-reduced gradient averages it, like a batch ``world`` times larger.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def size() -> int:
    """The job's world size: the process group's, else torchrun's ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def launched() -> bool:
    """True when started by torchrun (or a launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> tuple[int, int]:
    """Join torchrun's process group if launched and not yet joined (nccl on CUDA, gloo on CPU)."""
    if launched() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world()


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when a process group has more than one rank."""
    if world()[1] == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(order: torch.Tensor) -> torch.Tensor:
    """This rank's share of a permutation: every world-th index, equal lengths on all ranks."""
    rank, size = world()
    usable = order.numel() - order.numel() % size
    return order[:usable][rank::size]


def mean(value: float, device: torch.device) -> float:
    """Average a scalar over ranks (identity on one rank)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world()[1]


def broadcast(value: int, device: torch.device) -> int:
    """Rank 0's value of an int on every rank (identity on one rank)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` on one rank)."""
    if world()[1] == 1:
        return [value]
    every: list[Any] = [None] * world()[1]
    dist.all_gather_object(every, value)
    return every
