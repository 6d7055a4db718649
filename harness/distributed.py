"""Data-parallel training with torch.distributed: process group from the torchrun environment, the
config agreement check, and small collectives the trainer needs.

``torchrun --nproc_per_node=N -m harness train CONFIG`` sets RANK / WORLD_SIZE / LOCAL_RANK; the
backend is NCCL on GPUs and gloo on CPU. Without those variables everything here is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from harness.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def init_from_env() -> World:
    """Join the process group torchrun describes (once); a single process gets ``SINGLE``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def check_same_config(config_data: dict[str, Any], world: World) -> None:
    """Every rank must train the same run: compare a hash of each rank's resolved config."""
    if not world.distributed:
        return
    digest = hashlib.sha256(json.dumps(config_data, sort_keys=True, default=str).encode()).hexdigest()
    digests: list[Any] = [None] * world.size
    dist.all_gather_object(digests, digest)
    differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
    if differing:
        raise ConfigError(
            f"ranks disagree on the config: rank {differing[0]} differs from rank 0 "
            "(same file, overrides and environment on every rank)"
        )


def all_reduce_sum(value: float, world: World, device: torch.device) -> float:
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def broadcast_from_main(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a run folder named after the time)."""
    if not world.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
