"""Fusion weight search: every weight set on a grid over the simplex, scored on a labelled split."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DatasetError
from .core import to_probabilities

__all__ = ["WeightSearch", "search_weights", "simplex_grid"]


def simplex_grid(num_branches: int, step: float = 0.1) -> np.ndarray:
    """Every weight vector whose entries are multiples of ``step`` and sum to 1, as (M, B).

    ``1 / step`` must be a whole number. Zero weights are included (a branch left out).
    """
    if num_branches < 1:
        raise ValueError("need at least one branch")
    if not 0 < step <= 1:
        raise ConfigError(f"weight search step must be in (0, 1], got {step}")
    total = round(1.0 / step)
    if abs(total * step - 1.0) > 1e-6:
        raise ConfigError(f"weight search step {step} must divide 1 (e.g. 0.1, 0.05, 0.02)")

    def comps(n: int, t: int) -> Iterable[tuple[int, ...]]:
        if n == 1:
            yield (t,)
            return
        for first in range(t, -1, -1):
            for rest in comps(n - 1, t - first):
                yield (first, *rest)

    return np.array(list(comps(num_branches, total)), dtype=np.float64) / total


@dataclass(frozen=True)
class WeightSearch:
    """Every weight set tried with its accuracy, and the chosen one.

    ``trials`` is (M, B) weights in ``branches`` order, ``accuracy`` (M,). Among the sets with the
    best accuracy the chosen one is closest (Euclidean) to equal weights, so a flat optimum does
    not favour an arbitrary corner; remaining ties go to the first in grid order.
    """

    branches: tuple[str, ...]
    trials: np.ndarray
    accuracy: np.ndarray
    best_index: int
    n: int

    @property
    def best_weights(self) -> dict[str, float]:
        return {b: float(w) for b, w in zip(self.branches, self.trials[self.best_index])}

    @property
    def best_accuracy(self) -> float:
        return float(self.accuracy[self.best_index])

    def rows(self) -> list[dict[str, float]]:
        """One dict per weight set: the branch weights and ``accuracy``."""
        return [{**{b: float(w) for b, w in zip(self.branches, t)}, "accuracy": float(a)}
                for t, a in zip(self.trials, self.accuracy)]


def search_weights(scores: Mapping[str, np.ndarray], labels: np.ndarray | Sequence[int], step: float = 0.1,
                   spoke: Mapping[str, np.ndarray] | None = None, chunk: int = 512,
                   balanced: bool = False) -> WeightSearch:
    """Accuracy of every weight set of :func:`simplex_grid` on labelled photos (abstentions count wrong).

    ``scores[branch]`` is (N, C) rows (softmaxed by the authors' rule where needed), ``labels``
    (N,) class indices. ``balanced`` scores by the mean of the per-class accuracies (classes
    present in ``labels``) instead, so a rare class weighs as much as a common one.
    """
    names = tuple(scores)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    arr = np.stack([to_probabilities(np.asarray(scores[n], dtype=np.float64)) for n in names])
    if arr.shape[1] != len(y):
        raise ValueError(f"{arr.shape[1]} score rows but {len(y)} labels")
    if len(y) == 0:
        raise DatasetError("no labelled photos to search weights on")
    sp = np.stack([np.asarray(spoke[n], dtype=bool) if spoke and n in spoke else np.ones(len(y), bool)
                   for n in names]).astype(np.float64)
    grid = simplex_grid(len(names), step)
    acc = np.empty(len(grid))
    for start in range(0, len(grid), chunk):
        w = grid[start:start + chunk]  # (M, B)
        raw = np.einsum("mb,bn->mbn", w, sp)  # weights of the branches that spoke
        total = raw.sum(axis=1)  # (M, N)
        fused = np.einsum("mbn,bnc->mnc", raw, arr)
        pred = np.where(total > 0, fused.argmax(axis=2), -1)
        hit = pred == y[None, :]
        if balanced:
            acc[start:start + chunk] = np.mean([hit[:, y == c].mean(axis=1) for c in np.unique(y)], axis=0)
        else:
            acc[start:start + chunk] = hit.mean(axis=1)
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    dist = np.linalg.norm(grid[best] - 1.0 / len(names), axis=1)
    chosen = int(best[np.argmin(dist)])
    return WeightSearch(names, grid, acc, chosen, len(y))
