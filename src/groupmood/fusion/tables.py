"""Branch score tables lined up by photo name, and labels matched to the names."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..labels import GROUP_CLASSES
from .scores import ScoreTable

__all__ = ["align_tables", "match_labels"]


def align_tables(tables: Mapping[str, ScoreTable]) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Line branch score tables up by photo name.

    A photo missing from a branch's table is an abstention of that branch (uniform scores).

    Args:
        tables: branch -> its :class:`~groupmood.fusion.scores.ScoreTable`.

    Returns:
        The names (union, first-seen order), and per branch the (N, C) scores and the (N,) spoke flags.

    >>> from groupmood.fusion import ScoreTable
    >>> names, scores, spoke = align_tables({"faces": ScoreTable(["a.jpg", "b.jpg"], np.eye(3)[:2]),
    ...                                      "scene": ScoreTable(["b.jpg", "c.jpg"], np.eye(3)[1:])})
    >>> names, spoke["faces"].tolist()
    (['a.jpg', 'b.jpg', 'c.jpg'], [True, True, False])
    """
    names: list[str] = []
    index: dict[str, int] = {}
    for t in tables.values():
        for n in t.names:
            if n not in index:
                index[n] = len(names)
                names.append(n)
    c = len(GROUP_CLASSES)
    scores, spoke = {}, {}
    for b, t in tables.items():
        s = np.full((len(names), c), 1.0 / c)
        sp = np.zeros(len(names), dtype=bool)
        rows = [index[n] for n in t.names]
        s[rows] = t.scores
        sp[rows] = True
        scores[b], spoke[b] = s, sp
    return names, scores, spoke


def match_labels(names: Sequence[str], labels: Mapping[str, int]) -> np.ndarray:
    """The label of each photo name, matched exactly or else by file name without folder / extension.

    Args:
        names: photo names (e.g. of a score table).
        labels: photo name -> class index (:func:`~groupmood.fusion.scores.read_labels`).

    Returns:
        (N,) int64 class indices; -1 where no label matches (or the stem is ambiguous).

    >>> match_labels(["photos/a.jpg", "b.jpg"], {"a.png": 2}).tolist()
    [2, -1]
    """
    by_stem: dict[str, int] = {}
    dupes: set[str] = set()
    for n, y in labels.items():
        s = Path(n).stem
        if s in by_stem:
            dupes.add(s)
        by_stem[s] = y
    out = np.full(len(names), -1, dtype=np.int64)
    for i, n in enumerate(names):
        if n in labels:
            out[i] = labels[n]
        elif (s := Path(n).stem) in by_stem and s not in dupes:
            out[i] = by_stem[s]
    return out
