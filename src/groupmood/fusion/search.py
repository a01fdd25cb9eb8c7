"""Fusion weight search: every weight set on a grid over the simplex, scored on a labelled split."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DatasetError
from .core import to_probabilities

__all__ = ["OBJECTIVES", "WeightSearch", "search_weights", "simplex_grid"]


def simplex_grid(num_branches: int, step: float = 0.1) -> np.ndarray:
    """Every weight vector whose entries are multiples of ``step`` and sum to 1.

    Args:
        num_branches: B, the length of each vector.
        step: the grid step; ``1 / step`` must be a whole number.

    Returns:
        (M, B) float64 weights; zero weights are included (a branch left out).

    >>> simplex_grid(2, step=0.5).tolist()
    [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
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


#: What a weight search minimises or maximises: ``accuracy`` (the authors') or ``log_loss``.
OBJECTIVES = ("accuracy", "log_loss")

#: Probabilities are clipped to this before the log, so one confident miss cannot dominate.
_LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class WeightSearch:
    """Every weight set tried with its accuracy and log loss, and the chosen one.

    ``trials`` is (M, B) weights in ``branches`` order, ``accuracy`` and ``log_loss`` (M,). The
    chosen set has the best ``objective`` (highest accuracy or lowest log loss); among equally good
    sets it is the one closest (Euclidean) to equal weights, so a flat optimum does not favour an
    arbitrary corner; remaining ties go to the first in grid order.
    """

    branches: tuple[str, ...]
    trials: np.ndarray
    accuracy: np.ndarray
    best_index: int
    n: int
    log_loss: np.ndarray | None = None
    objective: str = "accuracy"

    @property
    def best_weights(self) -> dict[str, float]:
        return {b: float(w) for b, w in zip(self.branches, self.trials[self.best_index])}

    @property
    def best_accuracy(self) -> float:
        return float(self.accuracy[self.best_index])

    @property
    def best_log_loss(self) -> float:
        return float("nan") if self.log_loss is None else float(self.log_loss[self.best_index])

    def order(self) -> np.ndarray:
        """Trial indices, best first by the objective."""
        key = -self.accuracy if self.objective == "accuracy" or self.log_loss is None else self.log_loss
        return np.argsort(key, kind="stable")

    def rows(self) -> list[dict[str, float]]:
        """One dict per weight set: the branch weights, ``accuracy`` and ``log_loss``."""
        ll = self.log_loss if self.log_loss is not None else np.full(len(self.trials), np.nan)
        return [{**{b: float(w) for b, w in zip(self.branches, t)}, "accuracy": float(a), "log_loss": float(x)}
                for t, a, x in zip(self.trials, self.accuracy, ll)]


def search_weights(scores: Mapping[str, np.ndarray], labels: np.ndarray | Sequence[int], step: float = 0.1,
                   spoke: Mapping[str, np.ndarray] | None = None, chunk: int = 512,
                   balanced: bool = False, objective: str = "accuracy") -> WeightSearch:
    """Accuracy and log loss of every weight set of :func:`simplex_grid` on labelled photos.

    Abstentions count wrong and score the uniform vector. ``log_loss`` is smooth where accuracy on a
    few hundred photos is a step function with many ties, so the weights it picks move less from one
    sample of photos to the next.

    Args:
        scores: branch -> (N, C) rows (softmaxed by the authors' rule where needed).
        labels: (N,) class indices.
        step: the grid step.
        spoke: branch -> (N,) bool, whether it spoke on each photo; default: on all.
        chunk: weight sets scored at once (bounds memory).
        balanced: average over the classes present in ``labels``, so a rare class weighs as much as
            a common one.
        objective: ``accuracy`` (the authors') or ``log_loss``.

    Returns:
        The :class:`WeightSearch`: every set tried and the chosen one.

    >>> search = search_weights({"faces": np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.6, 0.2]]),
    ...                          "scene": np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]])},
    ...                         labels=[2, 0, 1], step=0.5)
    >>> search.best_weights, search.best_accuracy
    ({'faces': 0.5, 'scene': 0.5}, 1.0)
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"weight search objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
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
    classes = np.unique(y)
    acc = np.empty(len(grid))
    loss = np.empty(len(grid))
    rows = np.arange(len(y))
    for start in range(0, len(grid), chunk):
        w = grid[start:start + chunk]  # (M, B)
        raw = np.einsum("mb,bn->mbn", w, sp)  # weights of the branches that spoke
        total = raw.sum(axis=1)  # (M, N)
        fused = np.einsum("mbn,bnc->mnc", raw, arr)
        pred = np.where(total > 0, fused.argmax(axis=2), -1)
        hit = pred == y[None, :]
        p_true = np.where(total > 0, fused[:, rows, y] / np.where(total > 0, total, 1.0), 1.0 / arr.shape[2])
        nll = -np.log(np.clip(p_true, _LOG_FLOOR, 1.0))
        if balanced:
            acc[start:start + chunk] = np.mean([hit[:, y == c].mean(axis=1) for c in classes], axis=0)
            loss[start:start + chunk] = np.mean([nll[:, y == c].mean(axis=1) for c in classes], axis=0)
        else:
            acc[start:start + chunk] = hit.mean(axis=1)
            loss[start:start + chunk] = nll.mean(axis=1)
    if objective == "accuracy":
        best = np.flatnonzero(acc >= acc.max() - 1e-12)
    else:
        best = np.flatnonzero(loss <= loss.min() + 1e-12)
    dist = np.linalg.norm(grid[best] - 1.0 / len(names), axis=1)
    chosen = int(best[np.argmin(dist)])
    return WeightSearch(names, grid, acc, chosen, len(y), loss, objective)
