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
    """The authors' rule: rows whose sum differs from 1 by more than ``tol`` are logits, and softmaxed.

    As in the authors' code, logits that happen to sum to 1 (e.g. ``2, 0, -1``) are taken as they are.

    Args:
        scores: one row (C,) or rows (N, C).
        tol: how far from 1 a row's sum may be and still count as probabilities.

    Returns:
        float64 probabilities of the same shape.

    >>> to_probabilities([0.2, 0.3, 0.5]).tolist()
    [0.2, 0.3, 0.5]
    >>> to_probabilities([2.0, 1.0, 0.0]).round(3).tolist()
    [0.665, 0.245, 0.09]
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
    """The weights of ``branches`` as floats, checked.

    Args:
        weights: branch -> weight.
        branches: the branches to weight.

    Returns:
        branch -> float weight for each of ``branches`` (0 for one missing from ``weights``).

    Raises:
        ConfigError: for a negative or non-finite weight.

    >>> check_weights({"faces": 3}, ["faces", "scene"])
    {'faces': 3.0, 'scene': 0.0}
    """
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

    The weights renormalise over the branches that spoke. When those have weights summing to 0, the
    ``fallback`` branches that spoke (equal weights) give the label, e.g. the whole-image branch on a
    photo without faces when fusion weights fitted on group photos gave it weight 0; with none of
    them either, the photo is an abstention.

    Args:
        branches: branch -> its :class:`~groupmood.fusion.pooling.Pooled` result on the photo.
        weights: branch -> weight (missing: 0).
        classes: the class names of the score vectors.
        fallback: branches that label a photo on which no weighted branch spoke.

    Returns:
        The :class:`Fused` decision.

    >>> from groupmood.fusion import Pooled, pool
    >>> faces = pool([[0.1, 0.2, 0.7], [0.2, 0.2, 0.6]], areas=[900, 400])
    >>> scene = Pooled(np.array([0.5, 0.3, 0.2]), True)
    >>> fused = fuse({"faces": faces, "scene": scene}, {"faces": 3, "scene": 1})
    >>> fused.label, fused.probs.round(3).tolist(), fused.weights
    ('Positive', [0.238, 0.225, 0.538], {'faces': 0.75, 'scene': 0.25})
    >>> fuse({"faces": Pooled.abstain(), "scene": scene}, {"faces": 3, "scene": 1}).label  # no face
    'Negative'
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
    """The authors' fusion on aligned score rows of many photos (:func:`fuse`, vectorised).

    Args:
        scores: branch -> (N, C) rows; rows not summing to 1 are softmaxed (:func:`to_probabilities`).
        weights: branch -> weight (missing: 0).
        spoke: branch -> (N,) bool, whether it spoke on each photo; default: on all.
        fallback: branches that label a photo on which no weighted branch spoke.

    Returns:
        The fused probabilities (N, C) and the class index (N,), -1 where no branch with a positive
        weight spoke and no ``fallback`` branch either.

    >>> probs, index = fuse_rows({"faces": np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]),
    ...                           "scene": np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])},
    ...                          {"faces": 3, "scene": 1})
    >>> probs.round(3).tolist(), index.tolist()
    ([[0.2, 0.225, 0.575], [0.5, 0.275, 0.225]], [2, 0])
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
