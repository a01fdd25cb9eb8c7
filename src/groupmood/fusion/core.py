"""Weighted score fusion with abstention (Tan et al., EmotiW 2017).

Each branch gives one score vector per photo in the group class order ``Negative, Neutral,
Positive``; the vectors are multiplied by the branch weights and summed, and the argmax is the
label. :func:`fuse` / :func:`fuse_rows` weight and sum the branches that spoke; the weights
renormalise over them, so a photo without faces is labelled by the global branch alone. The
fused vector is a probability vector (the weighted mean); its argmax equals the authors'
weighted sum's. :func:`to_probabilities` is the authors' rule for score rows: a row whose numbers
do not sum to 1 within 0.01 is read as logits and softmaxed first.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..labels import GROUP_CLASSES
from ..mathops import softmax
from .pooling import Pooled

__all__ = ["ABSTAIN", "SUM_TOLERANCE", "Fused", "check_weights", "fuse", "fuse_rows", "to_probabilities"]


#: The label of a photo on which no branch spoke (only possible without a global branch).
ABSTAIN = "Abstain"

#: A row counts as probabilities when its sum is within this of 1 (the authors' tolerance).
SUM_TOLERANCE = 0.01


def to_probabilities(scores: np.ndarray | Sequence[float], tol: float = SUM_TOLERANCE) -> np.ndarray:
    """The authors' rule: rows whose sum differs from 1 by more than ``tol`` are softmaxed.

    Accepts one row (C,) or rows (N, C); returns float64 of the same shape. As in the authors'
    code, logits that happen to sum to 1 (e.g. ``2, 0, -1``) are taken as they are.
    """
    s = np.asarray(scores, dtype=np.float64)
    rows = s.reshape(-1, s.shape[-1]) if s.ndim else s.reshape(1, 1)
    out = rows.copy()
    bad = np.abs(rows.sum(axis=1) - 1.0) > tol
    if bad.any():
        out[bad] = softmax(rows[bad])
    return out.reshape(s.shape)


@dataclass(frozen=True)
class Fused:
    """The fused decision for one photo.

    ``probs`` is the weighted mean of the branches that spoke (uniform when none did);
    ``weights`` are the effective weights after renormalisation (0 for a branch that abstained),
    ``spoke`` says which branches spoke. ``label`` is :data:`ABSTAIN` and ``index`` -1 when no
    branch spoke.
    """

    label: str
    index: int
    probs: np.ndarray
    weights: dict[str, float]
    spoke: dict[str, bool]
    classes: tuple[str, ...] = GROUP_CLASSES

    @property
    def abstained(self) -> bool:
        return self.index < 0


def check_weights(weights: Mapping[str, float], branches: Iterable[str]) -> dict[str, float]:
    """The weights of ``branches`` as floats (missing: 0); a negative or non-finite weight is a ConfigError."""
    out = {}
    for b in branches:
        w = float(weights.get(b, 0.0))
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"branch weight {b}={weights.get(b)!r} must be a finite number >= 0")
        out[b] = w
    return out


def fuse(branches: Mapping[str, Pooled], weights: Mapping[str, float],
         classes: Sequence[str] = GROUP_CLASSES, fallback: Sequence[str] | None = None) -> Fused:
    """Weighted fusion of one photo's branch results; abstaining branches drop out.

    A branch missing from ``weights`` has weight 0. When the branches that spoke have weights
    summing to 0, the ``fallback`` branches that spoke (equal weights) give the label, e.g. the
    whole-image branch on a photo without faces when fusion weights fitted on group photos gave it
    weight 0; with none of them either, the photo is an abstention.
    """
    names = list(branches)
    w = check_weights(weights, names)
    scores = np.stack([to_probabilities(branches[n].probs) for n in names]) if names else np.zeros((0, len(classes)))
    spoke = np.array([branches[n].spoke for n in names], dtype=bool)
    probs, index, eff = _fuse_arrays(scores[:, None, :], spoke[:, None], np.array([w[n] for n in names]),
                                     _fallback_mask(fallback, names))
    i = int(index[0])
    return Fused(classes[i] if i >= 0 else ABSTAIN, i, probs[0],
                 {n: float(eff[k, 0]) for k, n in enumerate(names)},
                 {n: bool(spoke[k]) for k, n in enumerate(names)}, tuple(classes))


def _fallback_mask(fallback: Sequence[str] | None, names: Sequence[str]) -> np.ndarray | None:
    """(B,) equal weights of the fallback branches among ``names`` (None: no fallback)."""
    return np.array([float(n in fallback) for n in names]) if fallback else None


def _fuse_arrays(scores: np.ndarray, spoke: np.ndarray, weights: np.ndarray, fallback: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (B, N, C) probabilities, spoke (B, N), weights (B,) -> probs (N, C), index (N,), eff (B, N).

    ``fallback`` (B,) weights stand in for ``weights`` on the photos where no branch with a weight spoke.
    """
    b, n, c = scores.shape
    raw = weights[:, None] * spoke  # (B, N)
    if fallback is not None:
        raw = np.where(raw.sum(axis=0)[None, :] > 0, raw, fallback[:, None] * spoke)
    total = raw.sum(axis=0)  # (N,)
    ok = total > 0
    eff = np.divide(raw, total, out=np.zeros_like(raw, dtype=np.float64), where=ok[None, :])
    probs = np.einsum("bn,bnc->nc", eff, scores) if b else np.zeros((n, c))
    probs[~ok] = 1.0 / c
    index = np.where(ok, probs.argmax(axis=1), -1)
    return probs, index, eff


def fuse_rows(scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
              spoke: Mapping[str, np.ndarray] | None = None,
              fallback: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The authors' fusion on aligned score rows of many photos.

    ``scores[branch]`` is (N, C); rows not summing to 1 are softmaxed (:func:`to_probabilities`),
    multiplied by the branch weight and summed over branches that spoke (``spoke[branch]`` (N,)
    bool, default all). Returns the fused probabilities (N, C) and the class index (N,), -1 where
    no branch with a positive weight spoke and no ``fallback`` branch either (see :func:`fuse`).
    """
    names = list(scores)
    if not names:
        raise ConfigError("no branch scores to fuse")
    arr = np.stack([to_probabilities(np.asarray(scores[n], dtype=np.float64)) for n in names])
    sp = np.stack([np.asarray(spoke[n], dtype=bool) if spoke and n in spoke else np.ones(arr.shape[1], bool)
                   for n in names])
    w = check_weights(weights, names)
    probs, index, _ = _fuse_arrays(arr, sp, np.array([w[n] for n in names]), _fallback_mask(fallback, names))
    return probs, index
