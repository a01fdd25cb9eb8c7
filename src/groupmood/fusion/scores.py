"""Score and label files: the authors' format, ours, and photo labels.

The authors' score files have ``name s1 s2 s3`` per line (names may contain spaces, so the last
three tokens are the scores); ours are CSV with a ``name,Negative,Neutral,Positive`` header. A
photo a branch abstained on has no row. Labels are ``name,label`` CSV or ``name label`` lines.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError
from ..io import atomic_write_text
from ..labels import GROUP_CLASSES

__all__ = ["ScoreTable", "read_labels", "read_scores", "write_scores"]


@dataclass(frozen=True)
class ScoreTable:
    """One branch's scores: photo names and their (N, C) score rows in :data:`GROUP_CLASSES` order."""

    names: list[str]
    scores: np.ndarray


def _sniff_csv(first: str) -> bool:
    head = next(csv.reader([first]), [])
    return bool(head) and head[0].strip().lower() in ("name", "file", "image") and len(head) >= 4


def read_scores(path: str | Path, fmt: str = "auto") -> ScoreTable:
    """Read a score file.

    CSV columns are matched by class name, so any column order works; extra columns are ignored.

    Args:
        path: the file.
        fmt: ``authors`` (``name s1 s2 s3`` lines), ``csv`` (with a header), or ``auto`` (sniffed).

    Returns:
        The :class:`ScoreTable`.

    Raises:
        DatasetError: for a missing file, a malformed line, a duplicate name or a non-finite score.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "scores.txt"
    ...     _ = path.write_text("party 1.jpg 0.1 0.2 0.7\\n")
    ...     table = read_scores(path)
    >>> table.names, table.scores.tolist()
    (['party 1.jpg'], [[0.1, 0.2, 0.7]])
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
    """Write score rows atomically.

    Args:
        path: the file.
        names: one photo name per row.
        scores: (N, 3) rows in :data:`~groupmood.labels.GROUP_CLASSES` order.
        fmt: ``csv`` (header ``name,Negative,Neutral,Positive``) or ``authors`` (``name s1 s2 s3``; a
            name with a line break is an error there).
        ndigits: decimals written.

    Returns:
        The path written.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = write_scores(Path(d) / "scores.csv", ["a.jpg"], np.array([[0.1, 0.2, 0.7]]), ndigits=2)
    ...     print(path.read_text(), end="")
    name,Negative,Neutral,Positive
    a.jpg,0.10,0.20,0.70
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


def _class_index(value: str) -> int:
    v = value.strip()
    if v.isdigit() and int(v) < len(GROUP_CLASSES):
        return int(v)
    for i, c in enumerate(GROUP_CLASSES):
        if v.lower() == c.lower():
            return i
    raise ValueError(v)


def read_labels(path: str | Path) -> dict[str, int]:
    """Read a label file.

    Args:
        path: ``name,label`` CSV (header optional) or ``name label`` lines; labels are class names
            (case-insensitive) or indices 0 Negative, 1 Neutral, 2 Positive.

    Returns:
        photo name -> class index.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "labels.csv"
    ...     _ = path.write_text("name,label\\na.jpg,positive\\nb.jpg,0\\n")
    ...     labels = read_labels(path)
    >>> labels
    {'a.jpg': 2, 'b.jpg': 0}
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
