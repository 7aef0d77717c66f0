"""The torchrun processes: this process's rank, joining the process group, and gathering a
value from every rank (a no-op on one process)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from model.devices import resolve_device


@dataclass(frozen=True)
class Processes:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join torchrun's process group if launched by it (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes(), resolve_device(device_name)
    procs = Processes(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return procs, device


def close_processes(procs: Processes) -> None:
    """Leave the process group ``init_processes`` joined, if any."""
    if procs.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather(value: Any, procs: Processes) -> list[Any]:
    """``value`` of every rank, in rank order (every rank must call it)."""
    if not procs.distributed:
        return [value]
    gathered: list[Any] = [None] * procs.world_size
    dist.all_gather_object(gathered, value)
    return gathered
