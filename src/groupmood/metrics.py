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
    """Accuracy overall, per class and mean over classes, coverage, confusion matrix (rows true, columns predicted).

    ``pred`` is -1 where the model abstained: wrong in ``accuracy``, ``per_class`` and
    ``mean_class_accuracy``, left out of ``accuracy_spoke`` and of the confusion matrix.
    ``mean_class_accuracy`` averages the classes present in ``labels`` (balanced accuracy).
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
    """The Wilson score interval (95% for ``z`` = 1.96) of a proportion ``correct / n``.

    How far an accuracy measured on ``n`` photos may be from the one on all such photos: on 35 photos a
    measured 68.6% is compatible with anything from about 52% to 82%. ``n`` = 0 gives (0, 1).
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
