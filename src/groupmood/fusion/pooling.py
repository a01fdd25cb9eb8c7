"""Face pooling: a photo's face scores turned into one vector per branch, or an abstention.

:func:`pool` averages over all faces, or over the ``k`` largest faces by box area (the authors'
non-aligned branch uses the 3 largest). A photo without faces gives an explicit abstention
(:attr:`Pooled.spoke` is False), never an error.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..labels import GROUP_CLASSES

__all__ = ["Pooled", "parse_pooling", "pool", "pooling_name"]


@dataclass(frozen=True)
class Pooled:
    """One branch's score vector for one photo, or its abstention.

    ``probs`` is (C,) float64; on abstention it is uniform and carries no evidence. ``faces`` are
    the indices of the faces that were averaged (empty for the global branch and on abstention).
    """

    probs: np.ndarray
    spoke: bool
    faces: tuple[int, ...] = ()

    @classmethod
    def abstain(cls, num_classes: int = len(GROUP_CLASSES)) -> Pooled:
        """The result of a branch that saw nothing to score (a photo without faces).

        Args:
            num_classes: length of the (uniform) score vector.

        Returns:
            A Pooled with ``spoke`` False.

        >>> Pooled.abstain().spoke
        False
        """
        return cls(np.full(num_classes, 1.0 / num_classes), False, ())


def parse_pooling(text: str | int | None) -> int | None:
    """Read a face pooling setting.

    Args:
        text: ``"all"``, ``"topK"`` / ``"top-K"`` / ``"K"``, an int K, or None.

    Returns:
        None for every face, else K (the K largest faces).

    Raises:
        ConfigError: for anything else, or K < 1.

    >>> parse_pooling("all"), parse_pooling("top3"), parse_pooling(2)
    (None, 3, 2)
    """
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        k = text
    else:
        s = str(text).strip().lower()
        if s == "all":
            return None
        digits = s[3:].lstrip("-:") if s.startswith("top") else s
        if not digits.isdigit():
            raise ConfigError(f"pooling {text!r} is not understood; use 'all' or 'topK' with K a positive "
                              "integer, e.g. 'top3'")
        k = int(digits)
    if k < 1:
        raise ConfigError(f"pooling top-k needs k >= 1, got {text!r}")
    return k


def pooling_name(k: int | None) -> str:
    """The inverse of :func:`parse_pooling`.

    Args:
        k: None (every face) or the number of largest faces.

    Returns:
        ``"all"`` or ``"topK"``.

    >>> pooling_name(None), pooling_name(3)
    ('all', 'top3')
    """
    return "all" if k is None else f"top{k}"


def pool(probs: np.ndarray | Sequence[Sequence[float]], areas: np.ndarray | Sequence[float],
         k: int | None = None) -> Pooled:
    """One photo's face scores pooled into one vector: the mean over all faces, or the ``k`` largest.

    Ties in area keep the faces' order (the detector's, highest score first).

    Args:
        probs: (N, C) face scores.
        areas: (N,) face box areas.
        k: average the ``k`` largest faces; None: every face.

    Returns:
        The :class:`Pooled` vector; an abstention (never an error) when N is 0.

    >>> pooled = pool([[0.1, 0.2, 0.7], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]], areas=[900, 400, 100], k=2)
    >>> pooled.probs.round(3).tolist(), pooled.faces
    ([0.15, 0.2, 0.65], (0, 1))
    >>> pool(np.zeros((0, 3)), []).spoke
    False
    """
    p = np.asarray(probs, dtype=np.float64)
    a = np.asarray(areas, dtype=np.float64).reshape(-1)
    if p.ndim != 2:
        raise ValueError(f"face scores must be (N, C), got shape {p.shape}")
    if len(a) != len(p):
        raise ValueError(f"{len(p)} face score rows but {len(a)} areas")
    if len(p) == 0:
        return Pooled.abstain(p.shape[1] or len(GROUP_CLASSES))
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    order = np.argsort(-a, kind="stable")
    chosen = np.sort(order[:k]) if k is not None else np.arange(len(p))
    return Pooled(p[chosen].mean(axis=0), True, tuple(int(i) for i in chosen))
