"""The engine's data order: a permutation per epoch seeded by (seed, epoch), cut into batches.

The order depends on nothing but the seed and the epoch, so a run resumed mid-epoch skips the
batches it already consumed and sees the rest exactly as an uninterrupted run would, on one
process (:class:`EpochBatchSampler`) or on several (:class:`EpochDistributedSampler`).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler, Sampler

from ..errors import ConfigError

__all__ = ["EpochBatchSampler", "EpochDistributedSampler", "epoch_order"]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` training items in ``epoch``: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x0DDE5]).permutation(n)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches ``start`` to ``stop`` of a permutation seeded by (seed, epoch) (resume skips the rest)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0,
                 stop: int | None = None, drop_last: bool = True) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        full = n // batch_size if drop_last else math.ceil(n / batch_size)
        self.start, self.stop = start, full if stop is None else min(stop, full)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.seed, self.epoch)
        for b in range(self.start, self.start + len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


class EpochDistributedSampler(DistributedSampler):
    """This process's share of global batches ``start`` to ``stop`` of the engine's epoch order.

    Global batch b is the b-th slice of ``batch_size`` items of :func:`epoch_order`, as one process
    takes it; process r of N takes its positions r, r + N, r + 2N, ... (``batch_size / N`` items),
    so the N processes together see exactly the items of one process's batch b. Batch the items
    with ``BatchSampler(sampler, batch_size // N, drop_last=True)``. Resuming skips whole global
    batches (``start``), as :class:`EpochBatchSampler` does.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int, epoch: int, num_replicas: int, rank: int,
                 start: int = 0, stop: int | None = None) -> None:
        if batch_size % num_replicas:
            raise ConfigError(f"train.batch_size {batch_size} (the global batch) must divide evenly among "
                              f"{num_replicas} processes; use a multiple of {num_replicas}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.set_epoch(epoch)
        self.batch_size, self.local_batch = batch_size, batch_size // num_replicas
        full = len(dataset) // batch_size
        self.start, self.stop = start, full if stop is None else min(stop, full)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.local_batch

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(len(self.dataset), self.seed, self.epoch)
        for b in range(self.start, self.start + max(0, self.stop - self.start)):
            yield from order[b * self.batch_size + self.rank:(b + 1) * self.batch_size:self.num_replicas].tolist()
