"""Group-disjoint train / val / test splits and the split files that fix them.

Sources without splits of their own are split by :func:`group_split` (no person on two sides,
each class near its fraction in every split), and the split is written to a JSON file
(:func:`write_split`) that later runs, evaluations and the group sources reuse
(:func:`resolve_split`, :func:`split_indices`).
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DatasetError
from ..io import atomic_write

if TYPE_CHECKING:
    from .face_sources import FaceTable

__all__ = ["MISSING_AT_EVALUATION", "group_split", "read_split", "resolve_split", "split_indices", "write_split"]


def group_split(groups: Sequence[str], labels: Sequence[int], fractions: Mapping[str, float],
                seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic group-disjoint split, stratified by label: {split: sorted sample indices}.

    Groups are visited in a seeded random order; each goes to the split whose per-class shortfall
    (wanted share of the images seen so far minus what it holds) it fills best, so every split gets
    close to its fraction of each class and no group is on two sides.
    """
    names = [k for k, v in fractions.items() if v and v > 0]
    frac = np.asarray([float(fractions[k]) for k in names])
    if not names or (frac < 0).any():
        raise DatasetError(f"data.split needs positive fractions, got {dict(fractions)}")
    frac = frac / frac.sum()
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    uniq, inverse = np.unique(groups, return_inverse=True)
    n_cls = int(labels.max()) + 1 if labels.size else 1
    hist = np.zeros((len(uniq), n_cls))
    np.add.at(hist, (inverse, labels), 1.0)
    held = np.zeros((len(names), n_cls))
    seen = np.zeros(n_cls)
    owner = np.empty(len(uniq), dtype=np.int64)
    for g in np.random.default_rng(seed).permutation(len(uniq)):
        h = hist[g]
        deficit = frac[:, None] * (seen + h)[None, :] - held
        score = (deficit * h[None, :]).sum(axis=1) / h.sum()
        owner[g] = int(np.argmax(score))
        held[owner[g]] += h
        seen += h
    sample_owner = owner[inverse]
    return {name: np.flatnonzero(sample_owner == i) for i, name in enumerate(names)}


def write_split(path: str | Path, names: Sequence[str], splits: Mapping[str, np.ndarray],
                meta: Mapping[str, Any]) -> Path:
    """Write {split: [sample names]} and how it was made to a JSON file, atomically."""
    doc = {"meta": dict(meta), "splits": {k: [str(names[i]) for i in idx] for k, idx in splits.items()}}
    with atomic_write(path) as fh:
        json.dump(doc, fh, indent=1)
    return Path(path)


def read_split(path: str | Path) -> dict[str, list[str]]:
    """The {split: [sample names]} of a split file written by :func:`write_split`."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        return {str(k): [str(n) for n in v] for k, v in doc["splits"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"cannot read the split file {path} ({exc}); delete it to make a new split") from None


#: At evaluation, the largest share of a split file's names (one name at least) that may be missing from
#: the data (a face the detector no longer finds) before the file is taken for other data's.
MISSING_AT_EVALUATION = 0.01


def split_indices(path: Path, names: Sequence[str], source: str, fix: str,
                  allow_missing: bool = False) -> dict[str, np.ndarray]:
    """The sorted indices into ``names`` of each split of a split file; a foreign name raises DatasetError.

    ``allow_missing`` (evaluation): up to :data:`MISSING_AT_EVALUATION` of the file's names (one at least) may be
    absent (e.g. a photo whose face is no longer detected); they are left out with a warning.
    """
    where = {str(n): i for i, n in enumerate(names)}
    splits = read_split(path)
    missing = [n for members in splits.values() for n in members if n not in where]
    total = sum(len(m) for m in splits.values())
    if missing and not (allow_missing and len(missing) <= max(1.0, MISSING_AT_EVALUATION * total)):
        raise DatasetError(f"split file {path} names {len(missing)} sample(s) that {source} lacks "
                           f"(e.g. {missing[0]!r}), so it belongs to other data; {fix}")
    if missing:
        warnings.warn(f"split file {path}: {len(missing)} of its {total} samples are not in {source} now (e.g. "
                      f"{missing[0]!r}: no face found?); evaluated without them", stacklevel=2)
    return {split: np.asarray(sorted(where[n] for n in members if n in where), dtype=np.int64)
            for split, members in splits.items()}


def resolve_split(table: FaceTable, targets: np.ndarray, data: Mapping[str, Any], run_dir: Path,
                  source: str, create: bool = True) -> dict[str, np.ndarray]:
    """Reuse the split file of ``data.split_file`` (or ``run_dir/split.json``), or make and write it.

    ``create=False`` (evaluation: no training split asked for) never makes one: held-out samples are
    those of the split the model was trained with, and a new split would mix its training persons in.
    """
    path = Path(data.get("split_file") or run_dir / "split.json")
    if len(set(table.names.tolist())) != len(table.names):
        raise DatasetError(f"{source} has repeated sample names; a split file needs each name once")
    if path.is_file():
        return split_indices(path, table.names, source, "point data.split_file at a new file (or evaluate "
                             "with --split all)", allow_missing=not create)
    if not create:
        raise DatasetError(f"no split file at {path}: the held-out samples of {source} are those of the split "
                           "the model was trained with; set data.split_file to that run's split.json (the shipped "
                           "aligned model's is configs/splits/lfw_expressions.json) or evaluate with --split all")
    splits = group_split(table.groups, targets, data["split"], data.get("split_seed", 0))
    write_split(path, table.names, splits, {"source": source, "fractions": dict(data["split"]),
                                            "seed": data.get("split_seed", 0), "group_regex": data.get("group_regex")})
    return splits
