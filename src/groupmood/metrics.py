"""The accuracy table every evaluation reports: one definition for models, branches and fusion.

Face and global model evaluation, group evaluation, cross-validation and ``groupmood fuse`` all
report the same table, so their numbers mean the same thing.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .labels import GROUP_CLASSES

__all__ = ["accuracy_table"]


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
