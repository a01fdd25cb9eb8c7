"""A linear head on features and its L2-regularised logistic-regression fit.

The group head on a frozen face trunk (:mod:`groupmood.engine.group_head`) and the learned fusion
(:mod:`groupmood.fusion.model`, used at inference) share them; they live outside ``engine`` so that
inference never imports the training code.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..mathops import softmax

if TYPE_CHECKING:
    import torch

__all__ = ["LinearHead", "class_balanced_weights", "fit_softmax_regression"]


@dataclass(frozen=True)
class LinearHead:
    """``logits = x @ weight.T + bias`` on raw features; ``weight`` (C, D), ``bias`` (C,), float64.

    >>> LinearHead(np.eye(2), np.zeros(2)).probs(np.array([[1.0, 1.0]])).tolist()
    [[0.5, 0.5]]
    """

    weight: np.ndarray
    bias: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, C) float64 logits of (N, D) features."""
        return np.asarray(x, dtype=np.float64) @ self.weight.T + self.bias

    def probs(self, x: np.ndarray) -> np.ndarray:
        """(N, C) float64 class probabilities of (N, D) features."""
        return softmax(self.logits(x))

    def photo_probs(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """(N, C) mean face probabilities per photo; NaN rows for photos without faces (abstention)."""
        out = np.full((len(faces), self.weight.shape[0]), np.nan)
        for i, f in enumerate(faces):
            if len(f):
                out[i] = self.probs(f).mean(axis=0)
        return out


def class_balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, ``n / (num_classes * count)``: every present class weighs the same in total.

    Args:
        labels: (N,) class indices.
        num_classes: C.

    Returns:
        (C,) float64 weights; 0 for an absent class.

    >>> class_balanced_weights(np.array([0, 0, 0, 1]), 2).round(3).tolist()
    [0.667, 2.0]
    """
    count = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return np.divide(len(labels), num_classes * count, out=np.zeros(num_classes), where=count > 0)


def fit_softmax_regression(x: np.ndarray, y: np.ndarray, c: float, num_classes: int,
                           sample_weight: np.ndarray | None = None, max_iter: int = 500) -> LinearHead:
    """L2-regularised multinomial logistic regression on standardised features, folded back to raw ones.

    Objective ``c * sum_i w_i CE_i + ||W||^2 / 2`` (bias not penalised), the scikit-learn
    ``LogisticRegression(C=c)`` objective; constant features are left unscaled. Fitting uses torch
    (imported here); applying the returned head is numpy only.

    Args:
        x: (N, D) features.
        y: (N,) class indices.
        c: the inverse regularisation strength (> 0).
        num_classes: C.
        sample_weight: (N,) weights of the rows; all 1 by default.
        max_iter: L-BFGS iterations.

    Returns:
        The :class:`LinearHead` on raw features.

    >>> head = fit_softmax_regression(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]),
    ...                               c=10.0, num_classes=2)
    >>> head.probs(np.array([[0.0], [3.0]])).argmax(axis=1).tolist()
    [0, 1]
    """
    import torch
    import torch.nn.functional as F

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y) or not len(y):
        raise ValueError(f"need (N, D) features and N labels, got {x.shape} and {y.shape}")
    if not c > 0:
        raise ValueError(f"the inverse regularisation strength c must be > 0, got {c}")
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    z = torch.from_numpy((x - mean) / std)
    target = torch.from_numpy(y)
    weights = torch.from_numpy(w)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = F.cross_entropy(z @ weight.T + bias, target, reduction="none")
        loss = c * (weights * ce).sum() + 0.5 * (weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = weight.detach().numpy() / std
    b_raw = bias.detach().numpy() - w_raw @ mean
    return LinearHead(w_raw, b_raw)
