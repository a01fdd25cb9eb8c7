"""Face pooling, weighted score fusion with abstention, weight search, the authors' score files.

The system's last step (Tan et al., EmotiW 2017): each branch gives one score vector per photo in
the group class order ``Negative, Neutral, Positive``; the vectors are multiplied by the branch
weights and summed, and the argmax is the label.

* :func:`pool` turns a photo's face scores into one vector: the mean over all faces, or over the
  ``k`` largest faces by box area (the authors' non-aligned branch uses the 3 largest). A photo
  without faces gives an explicit abstention (:attr:`Pooled.spoke` is False).
* :func:`fuse` / :func:`fuse_rows` weight and sum the branches that spoke; the weights renormalise
  over them, so a photo without faces is labelled by the global branch alone. The fused vector is
  a probability vector (the weighted mean); its argmax equals the authors' weighted sum's.
* :func:`to_probabilities` is the authors' rule for score rows: a row whose numbers do not sum to 1
  within 0.01 is read as logits and softmaxed first.
* :func:`read_scores` / :func:`write_scores`: the authors' score files (``name s1 s2 s3`` per
  line; names may contain spaces, so the last three tokens are the scores) and ours (CSV with a
  ``name,Negative,Neutral,Positive`` header). A photo a branch abstained on has no row.
* :func:`search_weights`: every weight set on a grid over the simplex, scored on a labelled split.
* :data:`PRESETS`: the weights of the seven submissions.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, DatasetError
from .io import atomic_write_text
from .labels import GROUP_CLASSES

__all__ = ["ABSTAIN", "PRESETS", "Fused", "Pooled", "Preset", "ScoreTable", "WeightSearch", "align_tables",
           "fuse", "fuse_rows", "match_labels", "parse_pooling", "parse_weights", "pool", "pooling_name",
           "preset_weights", "read_labels", "read_scores", "search_weights", "simplex_grid", "to_probabilities",
           "write_scores"]

#: The label of a photo on which no branch spoke (only possible without a global branch).
ABSTAIN = "Abstain"

#: A row counts as probabilities when its sum is within this of 1 (the authors' tolerance).
SUM_TOLERANCE = 0.01


# --------------------------------------------------------------------------- pooling

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
        """The result of a branch that saw nothing to score (a photo without faces)."""
        return cls(np.full(num_classes, 1.0 / num_classes), False, ())


def parse_pooling(text: str | int | None) -> int | None:
    """``"all"`` -> None (every face); ``"top3"`` / ``"top-3"`` / ``"3"`` / 3 -> 3 (the 3 largest)."""
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
    """The inverse of :func:`parse_pooling`: None -> ``"all"``, 3 -> ``"top3"``."""
    return "all" if k is None else f"top{k}"


def pool(probs: np.ndarray | Sequence[Sequence[float]], areas: np.ndarray | Sequence[float],
         k: int | None = None) -> Pooled:
    """Average the (N, C) face scores of one photo over all faces, or the ``k`` largest by box area.

    Ties in area keep the faces' order (the detector's, highest score first). With N == 0 the
    result is an abstention, never an error.
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


# --------------------------------------------------------------------------- fusion

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
        z = rows[bad] - rows[bad].max(axis=1, keepdims=True)
        e = np.exp(z)
        out[bad] = e / e.sum(axis=1, keepdims=True)
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


def _check_weights(weights: Mapping[str, float], branches: Iterable[str]) -> dict[str, float]:
    out = {}
    for b in branches:
        w = float(weights.get(b, 0.0))
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"branch weight {b}={weights.get(b)!r} must be a finite number >= 0")
        out[b] = w
    return out


def fuse(branches: Mapping[str, Pooled], weights: Mapping[str, float],
         classes: Sequence[str] = GROUP_CLASSES) -> Fused:
    """Weighted fusion of one photo's branch results; abstaining branches drop out.

    A branch missing from ``weights`` has weight 0. When the branches that spoke have weights
    summing to 0 the photo is an abstention.
    """
    names = list(branches)
    w = _check_weights(weights, names)
    scores = np.stack([to_probabilities(branches[n].probs) for n in names]) if names else np.zeros((0, len(classes)))
    spoke = np.array([branches[n].spoke for n in names], dtype=bool)
    probs, index, eff = _fuse_arrays(scores[:, None, :], spoke[:, None], np.array([w[n] for n in names]))
    i = int(index[0])
    return Fused(classes[i] if i >= 0 else ABSTAIN, i, probs[0],
                 {n: float(eff[k, 0]) for k, n in enumerate(names)},
                 {n: bool(spoke[k]) for k, n in enumerate(names)}, tuple(classes))


def _fuse_arrays(scores: np.ndarray, spoke: np.ndarray, weights: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (B, N, C) probabilities, spoke (B, N), weights (B,) -> probs (N, C), index (N,), eff (B, N)."""
    b, n, c = scores.shape
    raw = weights[:, None] * spoke  # (B, N)
    total = raw.sum(axis=0)  # (N,)
    ok = total > 0
    eff = np.divide(raw, total, out=np.zeros_like(raw, dtype=np.float64), where=ok[None, :])
    probs = np.einsum("bn,bnc->nc", eff, scores) if b else np.zeros((n, c))
    probs[~ok] = 1.0 / c
    index = np.where(ok, probs.argmax(axis=1), -1)
    return probs, index, eff


def fuse_rows(scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
              spoke: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The authors' fusion on aligned score rows of many photos.

    ``scores[branch]`` is (N, C); rows not summing to 1 are softmaxed (:func:`to_probabilities`),
    multiplied by the branch weight and summed over branches that spoke (``spoke[branch]`` (N,)
    bool, default all). Returns the fused probabilities (N, C) and the class index (N,), -1 where
    no branch with a positive weight spoke.
    """
    names = list(scores)
    if not names:
        raise ConfigError("no branch scores to fuse")
    arr = np.stack([to_probabilities(np.asarray(scores[n], dtype=np.float64)) for n in names])
    sp = np.stack([np.asarray(spoke[n], dtype=bool) if spoke and n in spoke else np.ones(arr.shape[1], bool)
                   for n in names])
    w = _check_weights(weights, names)
    probs, index, _ = _fuse_arrays(arr, sp, np.array([w[n] for n in names]))
    return probs, index


# --------------------------------------------------------------------------- presets

@dataclass(frozen=True)
class Preset:
    """Fusion weights of one published run, with what the run used and what it scored (percent)."""

    weights: dict[str, float]
    description: str
    val: float | None
    test: float
    test_per_class: dict[str, float] = field(default_factory=dict)


_W_BASE = {"aligned": 3.0, "global": 0.5, "nonaligned": 0.5}
_W_EXTRA = {"aligned": 3.2, "global": 0.8, "nonaligned": 0.6}

#: The seven EmotiW 2017 submissions (slides, "Our submissions"). A preset fixes the weights
#: only: the runs also differ by which trained models they fused (global ResNet101 or VGG19, the
#: aligned model trained on train or train + val, the global model trained with the extra data),
#: and a preset cannot reproduce that; the scores are the authors' with their models.
PRESETS: dict[str, Preset] = {
    "run1": Preset(dict(_W_BASE), "Aligned (3.0) + Global ResNet101 (0.5) + Non-aligned (0.5)", 82.7, 79.9,
                   {"Positive": 82.0, "Neutral": 57.6, "Negative": 76.7}),
    "run2": Preset(dict(_W_BASE), "Aligned (3.0) + Global VGG19 (0.5) + Non-aligned (0.5)", 81.7, 79.1,
                   {"Positive": 82.3, "Neutral": 57.0, "Negative": 74.7}),
    "run3": Preset(dict(_W_BASE), "Aligned (3.0, trained on train only) + Global ResNet101 (0.5) + "
                   "Non-aligned (0.5)", None, 78.9, {"Positive": 85.2, "Neutral": 63.6, "Negative": 67.6}),
    "run4": Preset(dict(_W_BASE), "Aligned (3.0, trained on train only) + Global VGG19 (0.5) + "
                   "Non-aligned (0.5)", None, 78.8, {"Positive": 85.2, "Neutral": 64.84, "Negative": 66.6}),
    "run5": Preset(dict(_W_EXTRA), "Aligned (3.2) + Global ResNet101 (0.8, extra data) + Non-aligned (0.6)",
                   83.7, 80.9, {"Positive": 83.9, "Neutral": 58.8, "Negative": 76.4}),
    "run6": Preset(dict(_W_EXTRA), "Aligned (3.2) + Global VGG19 (0.8, extra data) + Non-aligned (0.6)",
                   83.8, 79.8, {"Positive": 83.9, "Neutral": 58.2, "Negative": 74.0}),
    "run7": Preset(dict(_W_EXTRA), "Aligned (3.2, trained on train only) + Global ResNet101 (0.8, extra "
                   "data) + Non-aligned (0.6)", None, 79.1, {"Positive": 85.5, "Neutral": 59.4, "Negative": 70.0}),
}


def preset_weights(name: str, branches: Iterable[str] | None = None) -> dict[str, float]:
    """The weights of preset ``name`` (``run1`` .. ``run7``, also ``emotiw17-run5`` or ``5``).

    With ``branches``, every preset branch must be among them (a preset names ``aligned``,
    ``global`` and ``nonaligned``).
    """
    key = name.strip().lower().removeprefix("emotiw17-").removeprefix("emotiw17_")
    key = f"run{key}" if key.isdigit() else key
    if key not in PRESETS:
        raise ConfigError(f"unknown fusion preset {name!r}; choose one of {', '.join(PRESETS)}")
    weights = dict(PRESETS[key].weights)
    if branches is not None:
        have = set(branches)
        missing = sorted(set(weights) - have)
        if missing:
            raise ConfigError(f"preset {name!r} weights branches {sorted(weights)}, but there is no "
                              f"{', '.join(missing)} branch (have {sorted(have)}); pass --weights instead")
    return weights


def parse_weights(text: str, branches: Iterable[str] | None = None) -> dict[str, float]:
    """``"aligned=3,global=0.5,nonaligned=0.5"`` -> a dict; unknown branch names are an error."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"weights {text!r}: {part!r} is not NAME=NUMBER; "
                              "write e.g. aligned=3,global=0.5,nonaligned=0.5") from None
    if not out:
        raise ConfigError(f"weights {text!r} name no branch; write e.g. aligned=3,global=0.5,nonaligned=0.5")
    if branches is not None:
        unknown = sorted(set(out) - set(branches))
        if unknown:
            raise ConfigError(f"weights name unknown branch(es) {', '.join(unknown)}; the branches are "
                              f"{', '.join(sorted(branches))}")
    _check_weights(out, out)
    return out


# --------------------------------------------------------------------------- score files

@dataclass(frozen=True)
class ScoreTable:
    """One branch's scores: photo names and their (N, C) score rows in :data:`GROUP_CLASSES` order."""

    names: list[str]
    scores: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.scores))


def _sniff_csv(first: str) -> bool:
    head = next(csv.reader([first]), [])
    return bool(head) and head[0].strip().lower() in ("name", "file", "image") and len(head) >= 4


def read_scores(path: str | Path, fmt: str = "auto") -> ScoreTable:
    """Read a score file: ``authors`` (``name s1 s2 s3`` lines), ``csv`` (with header), or ``auto``.

    CSV columns are matched by class name, so any column order works; extra columns are ignored.
    Duplicate names are an error.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"score file {p} does not exist")
    text = p.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if fmt not in ("auto", "authors", "csv"):
        raise ConfigError(f"score file format {fmt!r} is not one of auto, authors, csv")
    if fmt == "csv" or (fmt == "auto" and _sniff_csv(first)):
        names, rows = _read_csv_scores(p, text)
    else:
        names, rows = [], []
        for lineno, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.rsplit(None, 3)
            try:
                if len(parts) != 4:
                    raise ValueError
                row = [float(v) for v in parts[1:]]
            except ValueError:
                raise DatasetError(f"{p}:{lineno}: expected 'name s1 s2 s3' (three numbers last), got "
                                   f"{line.strip()!r}") from None
            names.append(parts[0].strip())
            rows.append(row)
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DatasetError(f"{p}: photo {n!r} has more than one row; keep one row per photo")
        seen.add(n)
    scores = np.asarray(rows, dtype=np.float64).reshape(-1, len(GROUP_CLASSES))
    if not np.isfinite(scores).all():
        raise DatasetError(f"{p}: some scores are not finite numbers")
    return ScoreTable(names, scores)


def _read_csv_scores(p: Path, text: str) -> tuple[list[str], list[list[float]]]:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    lower = [h.lower() for h in header]
    try:
        cols = [lower.index(c.lower()) for c in GROUP_CLASSES]
    except ValueError:
        raise DatasetError(f"{p}: the CSV header {header} must name the columns name, "
                           f"{', '.join(GROUP_CLASSES)}") from None
    names, rows = [], []
    for lineno, rec in enumerate(reader, 2):
        if not rec or not any(f.strip() for f in rec):
            continue
        try:
            rows.append([float(rec[c]) for c in cols])
        except (ValueError, IndexError):
            raise DatasetError(f"{p}:{lineno}: expected numbers in columns {', '.join(GROUP_CLASSES)}, "
                               f"got {rec}") from None
        names.append(rec[0])
    return names, rows


def write_scores(path: str | Path, names: Sequence[str], scores: np.ndarray, fmt: str = "csv",
                 ndigits: int = 6) -> Path:
    """Write score rows atomically, as ``csv`` (header ``name,Negative,Neutral,Positive``) or ``authors``.

    A name with a line break cannot be written in the authors' format and is an error.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1, len(GROUP_CLASSES))
    if len(s) != len(names):
        raise ValueError(f"{len(names)} names but {len(s)} score rows")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name", *GROUP_CLASSES])
        for n, row in zip(names, s):
            w.writerow([n, *(f"{v:.{ndigits}f}" for v in row)])
        text = buf.getvalue()
    elif fmt == "authors":
        out = []
        for n, row in zip(names, s):
            if "\n" in n or "\r" in n or not n.strip():
                raise DatasetError(f"photo name {n!r} cannot be written in the authors' score format")
            out.append(n + " " + " ".join(f"{v:.{ndigits}f}" for v in row) + "\n")
        text = "".join(out)
    else:
        raise ConfigError(f"score file format {fmt!r} is not one of csv, authors")
    atomic_write_text(path, text)
    return Path(path)


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


def _class_index(value: str) -> int:
    v = value.strip()
    if v.isdigit() and int(v) < len(GROUP_CLASSES):
        return int(v)
    for i, c in enumerate(GROUP_CLASSES):
        if v.lower() == c.lower():
            return i
    raise ValueError(v)


def read_labels(path: str | Path) -> dict[str, int]:
    """Photo name -> class index from ``name,label`` CSV (header optional) or ``name label`` lines.

    Labels are class names (case-insensitive) or indices 0 Negative, 1 Neutral, 2 Positive.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"label file {p} does not exist")
    text = p.read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    is_csv = bool(lines) and "," in lines[0]
    rows = list(csv.reader(io.StringIO("\n".join(lines)))) if is_csv else [ln.rsplit(None, 1) for ln in lines]
    out: dict[str, int] = {}
    for lineno, rec in enumerate(rows, 1):
        if len(rec) < 2:
            raise DatasetError(f"{p}:{lineno}: expected 'name,label', got {rec}")
        name, label = rec[0].strip(), rec[1]
        try:
            out[name] = _class_index(label)
        except ValueError:
            if lineno == 1:
                continue  # a header row
            raise DatasetError(f"{p}:{lineno}: label {label!r} is not one of {', '.join(GROUP_CLASSES)} "
                               "or 0-2") from None
    if not out:
        raise DatasetError(f"{p} holds no labelled photos")
    return out


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


# --------------------------------------------------------------------------- weight search

def simplex_grid(num_branches: int, step: float = 0.1) -> np.ndarray:
    """Every weight vector whose entries are multiples of ``step`` and sum to 1, as (M, B).

    ``1 / step`` must be a whole number. Zero weights are included (a branch left out).
    """
    if num_branches < 1:
        raise ValueError("need at least one branch")
    if not 0 < step <= 1:
        raise ConfigError(f"weight search step must be in (0, 1], got {step}")
    total = round(1.0 / step)
    if abs(total * step - 1.0) > 1e-6:
        raise ConfigError(f"weight search step {step} must divide 1 (e.g. 0.1, 0.05, 0.02)")

    def comps(n: int, t: int) -> Iterable[tuple[int, ...]]:
        if n == 1:
            yield (t,)
            return
        for first in range(t, -1, -1):
            for rest in comps(n - 1, t - first):
                yield (first, *rest)

    return np.array(list(comps(num_branches, total)), dtype=np.float64) / total


@dataclass(frozen=True)
class WeightSearch:
    """Every weight set tried with its accuracy, and the chosen one.

    ``trials`` is (M, B) weights in ``branches`` order, ``accuracy`` (M,). Among the sets with the
    best accuracy the chosen one is closest (Euclidean) to equal weights, so a flat optimum does
    not favour an arbitrary corner; remaining ties go to the first in grid order.
    """

    branches: tuple[str, ...]
    trials: np.ndarray
    accuracy: np.ndarray
    best_index: int
    n: int

    @property
    def best_weights(self) -> dict[str, float]:
        return {b: float(w) for b, w in zip(self.branches, self.trials[self.best_index])}

    @property
    def best_accuracy(self) -> float:
        return float(self.accuracy[self.best_index])

    def rows(self) -> list[dict[str, float]]:
        """One dict per weight set: the branch weights and ``accuracy``."""
        return [{**{b: float(w) for b, w in zip(self.branches, t)}, "accuracy": float(a)}
                for t, a in zip(self.trials, self.accuracy)]


def search_weights(scores: Mapping[str, np.ndarray], labels: np.ndarray | Sequence[int], step: float = 0.1,
                   spoke: Mapping[str, np.ndarray] | None = None, chunk: int = 512,
                   balanced: bool = False) -> WeightSearch:
    """Accuracy of every weight set of :func:`simplex_grid` on labelled photos (abstentions count wrong).

    ``scores[branch]`` is (N, C) rows (softmaxed by the authors' rule where needed), ``labels``
    (N,) class indices. ``balanced`` scores by the mean of the per-class accuracies (classes
    present in ``labels``) instead, so a rare class weighs as much as a common one.
    """
    names = tuple(scores)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    arr = np.stack([to_probabilities(np.asarray(scores[n], dtype=np.float64)) for n in names])
    if arr.shape[1] != len(y):
        raise ValueError(f"{arr.shape[1]} score rows but {len(y)} labels")
    if len(y) == 0:
        raise DatasetError("no labelled photos to search weights on")
    sp = np.stack([np.asarray(spoke[n], dtype=bool) if spoke and n in spoke else np.ones(len(y), bool)
                   for n in names]).astype(np.float64)
    grid = simplex_grid(len(names), step)
    acc = np.empty(len(grid))
    for start in range(0, len(grid), chunk):
        w = grid[start:start + chunk]  # (M, B)
        raw = np.einsum("mb,bn->mbn", w, sp)  # weights of the branches that spoke
        total = raw.sum(axis=1)  # (M, N)
        fused = np.einsum("mbn,bnc->mnc", raw, arr)
        pred = np.where(total > 0, fused.argmax(axis=2), -1)
        hit = pred == y[None, :]
        if balanced:
            acc[start:start + chunk] = np.mean([hit[:, y == c].mean(axis=1) for c in np.unique(y)], axis=0)
        else:
            acc[start:start + chunk] = hit.mean(axis=1)
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    dist = np.linalg.norm(grid[best] - 1.0 / len(names), axis=1)
    chosen = int(best[np.argmin(dist)])
    return WeightSearch(names, grid, acc, chosen, len(y))
