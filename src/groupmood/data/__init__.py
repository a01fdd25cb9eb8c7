"""Datasets of every branch, chosen by the config's ``data.kind``.

The training loop never names a dataset: it calls :func:`build_data`, which looks the kind up in
:data:`groupmood.config.DATA_KINDS` (each kind's builder and options, one registry) and returns a
:class:`DataBundle`. A new source plugs in with one more entry there.

A builder is ``fn(cfg, info, run_dir, splits) -> DataBundle``: ``cfg`` the resolved config,
``info`` the model's :class:`~groupmood.models.registry.ModelInfo` (family, input size, channels),
``run_dir`` where it may write a split file, ``splits`` the split names wanted ("train", "val",
"test", or "all" for every sample). Each dataset yields ``(uint8 (C, H, W) tensor, target)``, the
target a class index or a (num_classes,) float distribution; it has ``labels`` (hard labels as an
int64 array, for evaluation) and may have ``set_epoch(epoch)``.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError

__all__ = ["SPLITS", "DataBundle", "SubsetDataset", "build_data"]

#: The split names of every dataset kind (``all`` asks a builder for every sample).
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class DataBundle:
    """What a builder hands the engine: datasets by split, class names, optional batch augmentation."""

    datasets: dict[str, Dataset]
    classes: tuple[str, ...]
    batch_augment: Callable[[Tensor, Any], Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class SubsetDataset(Subset):
    """torch's ``Subset`` that keeps ``labels`` and ``set_epoch``: the fixed subset of an overfit check."""

    @property
    def labels(self) -> Any:
        return self.dataset.labels[list(self.indices)]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


Builder = Callable[[Mapping[str, Any], Any, Path, Sequence[str]], DataBundle]


def build_data(cfg: Mapping[str, Any], info: Any, run_dir: str | Path,
               splits: Sequence[str] = ("train", "val")) -> DataBundle:
    """Build the datasets of ``cfg["data"]`` for ``splits`` with the builder of its ``kind``."""
    from ..config import DATA_KINDS

    kind = cfg["data"]["kind"]
    if kind not in DATA_KINDS:
        raise ConfigError(f"unknown data.kind {kind!r}; choose one of {', '.join(sorted(DATA_KINDS))}")
    module, _, attr = DATA_KINDS[kind].builder.partition(":")
    builder: Builder = getattr(importlib.import_module(module), attr)
    return builder(cfg, info, Path(run_dir), tuple(splits))
