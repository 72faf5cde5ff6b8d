"""Who am I in a torchrun job, and what all processes agree on. Rank 0 of 1 without torchrun."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import TrainingError

MAX_PROCESSES = 65_536  # a job's processes: more than any cluster lends one run


class Rank:
    """This process's place in a torchrun job (rank 0 of 1 otherwise), from the variables torchrun
    sets; one that is not a whole number in its range is refused before any work."""

    def __init__(self) -> None:
        self.world = _env_int("WORLD_SIZE", 1, 1, MAX_PROCESSES)
        self.rank = _env_int("RANK", 0, 0, self.world - 1)
        self.local_rank = _env_int("LOCAL_RANK", 0, 0, self.world - 1)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise TrainingError(
            f"${name}={raw!r}: must be a whole number from {low} to {high} (torchrun sets it for each process). "
            "Unset it to train in one process, or start the run with torchrun."
        )
    return value


def start(rank: Rank, device: torch.device) -> torch.device:
    """Join the job's process group; returns this process's device (its own GPU under torchrun)."""
    if rank.world == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # rank 0 decodes all footage and validates alone while the others wait at a barrier
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    return device


def stop(rank: Rank) -> None:
    if rank.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, rank: Rank, device: torch.device) -> bool:
    """Is `flag` set on some process? Every process gets the same answer."""
    if rank.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def from_main(value, rank: Rank):
    """Rank 0's `value` on every process (a plan made from rank 0's clock, which all must follow)."""
    if rank.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module: torch.nn.Module, rank: Rank, device: torch.device) -> torch.nn.Module:
    """The module as the training step calls it: DDP-wrapped in a distributed run."""
    if rank.world == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module
