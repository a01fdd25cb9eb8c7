"""Stratified k-fold assignments of a labelled set, fixed in a committed JSON file.

Everything fitted on the group validation set (fusion weights, temperatures, a fusion model, a
group-face head) is chosen by cross-validation over these folds, so the figure reported is the
mean over held-out folds and every later run uses the very same split. A fold file is::

    {"k": 5, "seed": 0, "source": "...", "folds": {"Negative/Q110.jpg": 3, ...}}

:func:`stratified_folds` deals each class's items, shuffled with a seeded generator, round-robin
over the folds, so every fold holds each class in proportion (sizes differ by at most one).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..io import atomic_write_text

__all__ = ["fold_indices", "read_folds", "stratified_folds", "write_folds"]


def stratified_folds(labels: Sequence[int] | np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per item, stratified by label; the same labels and seed give the same folds."""
    y = np.asarray(labels)
    if k < 2:
        raise ValueError(f"cross-validation needs k >= 2 folds, got {k}")
    if y.size < k:
        raise DatasetError(f"{y.size} items cannot be split into {k} folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        fold[idx] = (start + np.arange(len(idx))) % k
        start += len(idx)  # the next class continues where this one stopped: fold sizes stay balanced
    return fold


def write_folds(path: str | Path, names: Sequence[str], folds: np.ndarray, k: int, seed: int, source: str) -> Path:
    """Write a fold file (names sorted, so the file is stable under reordering of the input)."""
    mapping = {str(n): int(f) for n, f in sorted(zip(names, folds))}
    doc = {"k": int(k), "seed": int(seed), "source": source, "folds": mapping}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return Path(path)


def read_folds(path: str | Path) -> tuple[dict[str, int], int]:
    """(name -> fold, k) from a fold file."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        folds, k = {str(n): int(f) for n, f in doc["folds"].items()}, int(doc["k"])
    except FileNotFoundError:
        raise DatasetError(f"fold file {p} does not exist; write one with groupmood.data.folds.write_folds") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{p} is not a fold file ({{'k': K, 'folds': {{name: fold}}}}): {exc}") from None
    bad = sorted(n for n, f in folds.items() if not 0 <= f < k)
    if bad:
        raise DatasetError(f"{p}: fold numbers must be 0..{k - 1}; wrong for {bad[:3]}")
    return folds, k


def fold_indices(path: str | Path, names: Sequence[str]) -> tuple[np.ndarray, int]:
    """Fold per name (in ``names`` order) from a fold file; every name must be in it."""
    folds, k = read_folds(path)
    missing = [n for n in names if n not in folds]
    if missing:
        raise DatasetError(f"{len(missing)} photo(s) are not in the fold file {path} (e.g. {missing[0]!r}); "
                           "the dataset changed since the folds were written: write them again and re-run")
    return np.array([folds[n] for n in names], dtype=np.int64), k
