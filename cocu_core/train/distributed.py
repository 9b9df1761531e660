"""Process-group setup for one or many training processes: the same code on CPU (gloo) and CUDA (nccl).

`torchrun` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; without them training runs as a
single process with no process group, and every collective below is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job and which device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Why: only rank 0 writes checkpoints, curves and progress bars."""
        return self.rank == 0


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """Why: `auto` trains on CUDA when present; an explicit CUDA request without CUDA is a user error."""
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device '{pref}' asks for CUDA, but torch sees no CUDA device here")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Why: join the torchrun job when launched by it (nccl on GPU, gloo on CPU), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device)


def all_mean(value: torch.Tensor) -> torch.Tensor:
    """Why: logged losses are the global batch's, whatever the number of processes."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Why: rank 0 decides (e.g. which checkpoint to resume); the others follow."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def barrier() -> None:
    """Why: no rank reads a checkpoint before rank 0 finished writing it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Why: leave no process group behind (tests run several jobs in one interpreter)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
