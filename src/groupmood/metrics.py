"""The accuracy table every evaluation reports: one definition for models, branches and fusion.

Face and global model evaluation, group evaluation, cross-validation and ``groupmood fuse`` all
report the same table, so their numbers mean the same thing.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .labels import GROUP_CLASSES

__all__ = ["accuracy_table", "wilson_interval"]


def accuracy_table(pred: np.ndarray | Sequence[int], labels: np.ndarray | Sequence[int],
                   classes: Sequence[str] = GROUP_CLASSES) -> dict[str, Any]:
    """The accuracy table of predictions against labels.

    An abstention counts wrong in ``accuracy``, ``per_class`` and ``mean_class_accuracy`` and is left
    out of ``accuracy_spoke`` and of the confusion matrix. ``mean_class_accuracy`` averages the
    classes present in ``labels`` (balanced accuracy).

    Args:
        pred: (N,) predicted class indices, -1 where the model abstained.
        labels: (N,) true class indices.
        classes: the class names, in index order.

    Returns:
        A JSON-ready dict: ``n``, ``accuracy``, ``mean_class_accuracy``, ``coverage``,
        ``accuracy_spoke``, ``classes``, ``per_class`` (accuracy and support) and ``confusion``
        (rows true, columns predicted).

    >>> table = accuracy_table([2, 0, -1, 2], [2, 1, 0, 2])
    >>> table["accuracy"], table["coverage"], table["confusion"]
    (0.5, 0.75, [[0, 0, 0], [1, 0, 0], [0, 0, 2]])
    """
    pred = np.asarray(pred, dtype=np.int64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    k = len(classes)
    spoke = pred >= 0
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (y[spoke], pred[spoke]), 1)
    correct = pred == y
    per_class = {}
    for i, c in enumerate(classes):
        m = y == i
        per_class[c] = {"accuracy": float(correct[m].mean()) if m.any() else None, "support": int(m.sum())}
    present = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    return {
        "n": int(y.size),
        "accuracy": float(correct.mean()) if y.size else 0.0,
        "mean_class_accuracy": float(np.mean(present)) if present else 0.0,
        "coverage": float(spoke.mean()) if y.size else 0.0,
        "accuracy_spoke": float(correct[spoke].mean()) if spoke.any() else 0.0,
        "classes": list(classes),
        "per_class": per_class,
        "confusion": conf.tolist(),
    }


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n``.

    How far an accuracy measured on ``n`` photos may be from the one on all such photos.

    Args:
        correct: the photos labelled right.
        n: the photos.
        z: the normal quantile (1.96: a 95% interval).

    Returns:
        (low, high); (0, 1) when ``n`` is 0.

    >>> [round(x, 2) for x in wilson_interval(24, 35)]  # 24 of 35 right: 68.6%
    [0.52, 0.81]
    """
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
