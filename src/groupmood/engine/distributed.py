"""The training engine under torchrun: process group, per-process device, reductions, rank-0 writes.

Nothing here starts unless asked: :func:`requested` is true only when torchrun (or another
launcher) put ``WORLD_SIZE > 1`` in the environment, or when the caller already initialised a
``torch.distributed`` process group of more than one process. A plain ``groupmood train`` never
touches ``torch.distributed``.

What the engine does with N processes (see docs/scaling.md):

- ``train.batch_size`` is the *global* (effective) batch: each process takes ``batch_size / N``
  items of every global batch, so a recipe means the same thing on any number of processes and its
  ``optim.lr`` needs no scaling; the run folder's ``scaling.json`` records both numbers.
- gloo on CPU, NCCL on CUDA (process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``); gradients are averaged
  by ``DistributedDataParallel``.
- BatchNorm follows ``train.batchnorm``: ``batch`` (torch's default: each process normalises by its
  own batch), ``sync`` (``SyncBatchNorm``: statistics of the global batch; CUDA only, as in torch),
  ``frozen`` (running statistics fixed, as initialised or loaded). A model that freezes its own
  BatchNorm (``model.kwargs.freeze_bn``) keeps it frozen whatever this says.
- rank 0 alone writes checkpoints, the resolved config, metrics and logs; every rank reads the
  checkpoint on ``--resume``.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = ["DistInfo", "all_gather", "barrier", "broadcast", "local_rank", "main_first", "requested",
           "setup", "sum_counts", "teardown"]

#: How long a process waits for the others at a collective (validation, a slow data build) before failing.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank, number of processes, local rank, backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    owns_group: bool = False  # True when setup() created the process group (teardown destroys it)

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


SINGLE = DistInfo()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; launch with torchrun, "
                          f"which sets it") from None


def requested() -> bool:
    """Whether this process is one of several: ``WORLD_SIZE > 1`` or an initialised multi-process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return _env_int("WORLD_SIZE", 1) > 1


def local_rank() -> int:
    """torchrun's ``LOCAL_RANK`` (0 without it): this process's GPU index on its machine."""
    return _env_int("LOCAL_RANK", 0)


def process_device(device: torch.device) -> torch.device:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK``; an explicit index is refused."""
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"device {device} names one GPU, but under torchrun each process takes its own "
                          f"(cuda:LOCAL_RANK); use --device cuda and pick GPUs with CUDA_VISIBLE_DEVICES")
    index = local_rank()
    if index >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {index} but torch sees {torch.cuda.device_count()} GPU(s); start no more "
                          "processes per machine than it has GPUs (torchrun --nproc_per_node)")
    return torch.device("cuda", index)


def setup(device: torch.device) -> DistInfo:
    """Join (or create, from torchrun's environment) the process group: NCCL on CUDA, gloo on CPU."""
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process or install a full torch")
    owns = False
    if not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if k not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set; launch with torchrun "
                              "--nproc_per_node N (it sets them) or unset WORLD_SIZE")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=TIMEOUT)
        owns = True
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank(), str(dist.get_backend()), owns)


def teardown(info: DistInfo) -> None:
    """Destroy the process group when :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one)."""
    if info.enabled:
        dist.barrier()


@contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first (it may write split files, caches, fetched weights), then the others."""
    if info.enabled and not info.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if info.enabled and info.is_main:
            dist.barrier()


def sum_counts(info: DistInfo, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64, on ``device`` as NCCL needs)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(info: DistInfo, obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
