"""Calibration of a branch's probabilities: temperature (and per-class bias), NLL, ECE.

A branch trained on other data than the photos it is used on can be right half of the time and
still say 0.99. Temperature scaling (Guo et al., ICML 2017) divides the branch's log-probabilities
by ``T`` (T > 1 softens, T < 1 sharpens) and may add a per-class bias ``b`` (a prior shift, useful
when the training classes were balanced differently); both are fitted by minimising the negative
log-likelihood on labelled validation photos, and neither changes the branch's argmax when
``b`` is 0. Probabilities come in and go out: ``calibrated = softmax(log(p) / T + b)``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..mathops import softmax

if TYPE_CHECKING:
    import torch

__all__ = ["Calibration", "calibrate_rows", "expected_calibration_error", "fit_calibration",
           "negative_log_likelihood"]

_EPS = 1e-6


@dataclass(frozen=True)
class Calibration:
    """``softmax(log(p) / temperature + bias)``; the identity is ``Calibration()``.

    >>> Calibration(temperature=2.0).apply([0.8, 0.1, 0.1]).round(3).tolist()  # softer
    [0.586, 0.207, 0.207]
    """

    temperature: float = 1.0
    bias: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")

    @property
    def is_identity(self) -> bool:
        return self.temperature == 1.0 and not any(self.bias)

    def apply(self, probs: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Calibrate probabilities (numpy only).

        Args:
            probs: (N, C) or (C,) probabilities.

        Returns:
            float64 calibrated probabilities of the same shape.
        """
        p = np.asarray(probs, dtype=np.float64)
        if self.is_identity:
            return p
        z = np.log(np.clip(p, _EPS, 1.0)) / self.temperature
        if self.bias:
            if len(self.bias) != p.shape[-1]:
                raise ValueError(f"calibration bias has {len(self.bias)} classes, probabilities {p.shape[-1]}")
            z = z + np.asarray(self.bias)
        return softmax(z)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": round(float(self.temperature), 6)}
        if self.bias:
            out["bias"] = [round(float(b), 6) for b in self.bias]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Calibration:
        """From a bundle's ``calibration:`` mapping.

        Args:
            d: ``temperature`` and optionally ``bias``; None or empty: the identity.

        Returns:
            The calibration.

        >>> Calibration.from_dict({"temperature": 1.5})
        Calibration(temperature=1.5, bias=())
        """
        if not d:
            return cls()
        unknown = sorted(set(d) - {"temperature", "bias"})
        if unknown:
            raise ValueError(f"unknown calibration key(s) {', '.join(unknown)}; known: temperature, bias")
        return cls(float(d.get("temperature", 1.0)), tuple(float(b) for b in d.get("bias") or ()))


def calibrate_rows(probs: Mapping[str, np.ndarray], spoke: Mapping[str, np.ndarray],
                   calibration: Mapping[str, Calibration]) -> dict[str, np.ndarray]:
    """Calibrate each branch's rows where it spoke; rows of an abstention are left as they are.

    Args:
        probs: branch -> (N, C) probabilities.
        spoke: branch -> (N,) bool.
        calibration: branch -> its :class:`Calibration`.

    Returns:
        branch -> (N, C) rows.

    >>> rows = calibrate_rows({"scene": np.array([[0.8, 0.1, 0.1]])}, {"scene": np.array([False])},
    ...                       {"scene": Calibration(2.0)})
    >>> rows["scene"].tolist()
    [[0.8, 0.1, 0.1]]
    """
    return {b: np.where(spoke[b][:, None], calibration[b].apply(p), p) for b, p in probs.items()}


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class), probabilities clipped at 1e-6.

    Args:
        probs: (N, C) probabilities.
        labels: (N,) true class indices.

    Returns:
        The mean negative log-likelihood; 0 for no rows.

    >>> round(negative_log_likelihood(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0, 0])), 3)
    0.399
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0)).mean()) if len(y) else 0.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: |accuracy - confidence| of the top class, averaged over equal-width confidence bins.

    Args:
        probs: (N, C) probabilities.
        labels: (N,) true class indices.
        bins: the number of confidence bins.

    Returns:
        The expected calibration error, 0 (honest) to 1.

    >>> round(expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1])), 2)
    0.4
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if not len(y):
        return 0.0
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def fit_calibration(probs: np.ndarray, labels: np.ndarray, bias: bool = False, max_iter: int = 200) -> Calibration:
    """The temperature (and, with ``bias``, per-class bias) of least NLL on labelled probabilities.

    Fitted with L-BFGS on log T (so T stays positive); the bias is centred (it sums to 0). The fit
    imports torch; :meth:`Calibration.apply` is numpy only.

    Args:
        probs: (N, C) probabilities of labelled validation photos.
        labels: (N,) true class indices.
        bias: fit a per-class bias too.
        max_iter: L-BFGS iterations.

    Returns:
        The :class:`Calibration`.

    >>> p = np.array([[0.98, 0.01, 0.01], [0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.01, 0.01, 0.98]])
    >>> fit_calibration(p, np.array([0, 1, 1, 2])).temperature > 1  # over-confident: softened
    True
    """
    import torch

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probabilities must be (N, C) with N = {len(y)} labels, got {p.shape}")
    if not len(y):
        raise ValueError("no labelled probabilities to calibrate on")
    logp = torch.from_numpy(np.log(np.clip(p, _EPS, 1.0)))
    target = torch.from_numpy(y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(p.shape[1], dtype=torch.float64, requires_grad=bias)
    params = [log_t, b] if bias else [log_t]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logp / log_t.exp() + (b - b.mean()), target)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    centred = (b - b.mean()).detach().numpy()
    return Calibration(t, tuple(float(v) for v in centred) if bias else ())
