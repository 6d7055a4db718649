"""Data-parallel training with torch.distributed: process group from the torchrun environment, the
config agreement check, and small collectives the trainer needs.

``torchrun --nproc_per_node=N -m harness train CONFIG`` sets RANK / WORLD_SIZE / LOCAL_RANK; the
backend is NCCL on GPUs and gloo on CPU. Without those variables everything here is a no-op.

A rank that fails would leave the others blocked in their next collective until the backend timeout
(30 minutes for gloo, 10 for NCCL). So the first failure is written to the rendezvous store
(``report_failure``) and a watcher thread on every rank, polling the store, aborts the process group
and exits with the failed rank's exit code and message.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import sys
import threading
import time
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
    world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    _start_failure_watch(world)
    return world


FAILURE_KEY = "harness/failure"
SEEN_KEY = "harness/failure_seen"
POLL_S = 0.1
ACK_TIMEOUT_S = 10.0


@dataclass
class _FailureWatch:
    world: World
    store: Any  # the main thread's client of the rendezvous store; the watcher has its own clone
    stop: threading.Event


_watch: _FailureWatch | None = None


def _start_failure_watch(world: World) -> None:
    global _watch
    if _watch is not None:
        return
    store: Any = dist.distributed_c10d._get_default_store()  # typeshed of Store lacks clone()
    _watch = _FailureWatch(world, store.clone(), threading.Event())
    thread = threading.Thread(
        target=_watch_failures, args=(store.clone(), world, _watch.stop), name="harness-failure-watch", daemon=True
    )
    thread.start()
    # A daemon thread killed inside a store call at interpreter exit aborts the process (SIGABRT).
    atexit.register(_stop_watching, _watch.stop, thread)


def _stop_watching(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    thread.join(timeout=5)


def _watch_failures(store: Any, world: World, stop: threading.Event) -> None:
    """Wait for another rank's failure; then abort the collectives this rank is blocked in and exit
    the process at once with that rank's code (the main thread may be stuck inside C++)."""
    while not stop.wait(POLL_S):
        try:
            if not store.check([FAILURE_KEY]):
                continue
            failure = json.loads(store.get(FAILURE_KEY))
        except Exception:  # the store's host exited after a finished run: nothing left to watch
            return
        if failure["rank"] == world.rank:
            return
        print(
            f"error: rank {failure['rank']} failed: {failure['message']} (rank {world.rank} stopped)",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(Exception):
            store.add(SEEN_KEY, 1)
            dist.distributed_c10d._abort_process_group()
        sys.stdout.flush()
        os._exit(failure["code"])


def report_failure(message: str, code: int) -> None:
    """Tell every other rank that this one is exiting with ``code`` (the first report wins), and
    wait, at most ``ACK_TIMEOUT_S``, until they have seen it: the store may live in this process."""
    watch = _watch
    if watch is None:
        return
    watch.stop.set()
    payload = json.dumps({"rank": watch.world.rank, "code": code, "message": message})
    try:
        if watch.store.compare_set(FAILURE_KEY, "", payload) != payload.encode():
            watch.store.add(SEEN_KEY, 1)
            return
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while watch.store.add(SEEN_KEY, 0) < watch.world.size - 1 and time.monotonic() < deadline:
            time.sleep(POLL_S)
    except Exception:  # the store's host is gone: no rank is left waiting
        return


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def check_same_config(config_data: dict[str, Any], world: World) -> None:
    """Every rank must train the same run: compare a hash of each rank's resolved config."""
    if not world.distributed:
        return
    digest = hashlib.sha256(json.dumps(config_data, sort_keys=True, default=str).encode()).hexdigest()
    digests = all_gather(digest, world)
    differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
    if differing:
        raise ConfigError(
            f"ranks disagree on the config: rank {differing[0]} differs from rank 0 "
            "(same file, overrides and environment on every rank)"
        )


def all_gather(value: Any, world: World) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


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
