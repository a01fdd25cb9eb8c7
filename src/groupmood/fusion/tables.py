"""Branch score tables lined up by photo name, and labels matched to the names."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..labels import GROUP_CLASSES
from .scores import ScoreTable

__all__ = ["align_tables", "match_labels"]


def align_tables(tables: Mapping[str, ScoreTable]) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Names (union, first-seen order), scores (N, C) and spoke (N,) per branch.

    A photo missing from a branch's table is an abstention of that branch (uniform scores).
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
    """Label index per name, matched exactly or else by file name without folder / extension; -1 if none."""
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
