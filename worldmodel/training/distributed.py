"""Devices and data-parallel training, one mechanism for every run.

Every rank draws the same global batch from identically seeded generators and
trains on its slice of it; after the backward pass the gradients are averaged over
ranks in one flat all-reduce. So R processes compute the same update as one process
on the whole batch. Works under ``torchrun`` (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

DEVICES = ("auto", "cpu", "cuda")


def distributed() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def current_rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def shutdown_distributed() -> None:
    """Wait for every rank, then close the process group (a live gloo group aborts at exit)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_device_name(name: str) -> None:
    """Raise unless ``name`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    index = name.split(":", 1)[1] if isinstance(name, str) and name.startswith("cuda:") else None
    if name not in DEVICES and not (index is not None and index.isdigit()):
        raise ValueError(f"device must be one of {list(DEVICES)} or cuda:N (N a GPU index), got {name!r}")


def resolve_device(name: str, rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` (this rank's GPU) or ``cuda:N`` without
    such a GPU is a clear error, before any work starts."""
    check_device_name(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for, but torch sees no CUDA GPU (torch {torch.__version__}, "
                           f"built for CUDA {torch.version.cuda or 'none'}); use device=auto or device=cpu")
    if name.startswith("cuda:"):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"device={name} pins every torchrun process to one GPU; use device=cuda (one GPU per rank)")
        index, count = int(name.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise RuntimeError(f"device={name} was asked for, but torch sees {count} GPU(s): the index must be below "
                               f"{count}")
        return torch.device("cuda", index)
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def rank_slice(batch_size: int, rank: int, world: int) -> slice:
    """This rank's part of a global batch."""
    return slice(rank * batch_size // world, (rank + 1) * batch_size // world)


def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """Average the gradients of ``params`` over ``world`` ranks (one flat all-reduce)."""
    if world == 1:
        return
    for p in params:  # every rank reduces the same list, also for a parameter this rank's slice left untouched
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(averaged)


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. to fill a cache), the other ranks after it."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank != 0:
        dist.barrier()
    try:
        yield
    finally:  # release the other ranks even when rank 0 fails (they then fail on their own)
        if rank == 0 and dist.is_initialized():
            dist.barrier()
