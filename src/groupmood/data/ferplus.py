"""FERPlus: the vote files, their label cleaning and the images of each split.

``root/FER2013{Train,Valid,Test}/label.csv`` rows are ``file, "(0, 0, 48, 48)", 10 vote counts``
(the 8 emotions, unknown, not-a-face). Labels are cleaned exactly as in the FERPlus reference
(:func:`ferplus_distribution`); the images are read once into a (N, 48, 48) uint8 array and cached
(:mod:`.source_cache`).
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..errors import DatasetError
from ..labels import FERPLUS_EMOTIONS
from .source_cache import CACHE_VERSION, cached_arrays, file_key

__all__ = ["FERPLUS_FOLDERS", "FERPLUS_MODES", "FERPLUS_VOTE_COLUMNS", "ferplus_distribution", "ferplus_targets",
           "read_ferplus"]

FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (*FERPLUS_EMOTIONS, "unknown", "NF")
FERPLUS_FOLDERS: dict[str, str] = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
FERPLUS_MODES: tuple[str, ...] = ("majority", "probability", "crossentropy")


def ferplus_distribution(votes: Sequence[float], mode: str) -> np.ndarray | None:
    """The cleaned 8-emotion target of one image's 10 vote counts, or None when it is dropped.

    Port of the FERPlus reference (Barsoum et al. 2016): single votes are outliers and removed;
    ``majority`` keeps the image when one emotion has more than half of the remaining votes;
    ``probability`` / ``crossentropy`` keep at most three emotions (ties enter together), stopping
    once 75 % of the votes are covered, and drop the image when 50 % or less are kept, when more
    than three tie, or when unknown / not-a-face comes out on top. Returns the normalised
    distribution over :data:`~groupmood.labels.FERPLUS_EMOTIONS` (one-hot in majority mode).
    """
    if mode not in FERPLUS_MODES:
        raise ValueError(f"FERPlus mode must be one of {FERPLUS_MODES}, got {mode!r}")
    raw = np.asarray(votes, dtype=np.float64).copy()
    if raw.shape != (len(FERPLUS_VOTE_COLUMNS),):
        raise ValueError(f"need {len(FERPLUS_VOTE_COLUMNS)} vote counts, got {raw.shape}")
    raw[raw < 1.0 + 1e-9] = 0.0
    total = raw.sum()
    emo = np.zeros_like(raw)
    if mode == "majority":
        top = raw.max()
        if top > 0.5 * total:
            emo[int(np.argmax(raw))] = top
    else:
        part, count, valid = 0.0, 0, True
        while part < 0.75 * total and count < 3 and valid:
            top = raw.max()
            for i in range(raw.size):
                if raw[i] != top:
                    continue
                emo[i], raw[i] = top, 0.0
                part += top
                count += 1
                if i >= len(FERPLUS_EMOTIONS):
                    valid = False
                    if emo.sum() > top:
                        emo[i] = 0.0
                        count -= 1
                    break
        if emo.sum() <= 0.5 * total or count > 3:
            emo[:] = 0.0
    if emo.sum() <= 0 or int(np.argmax(emo)) >= len(FERPLUS_EMOTIONS):
        return None
    emo = emo[: len(FERPLUS_EMOTIONS)]
    return emo / emo.sum()


def ferplus_targets(votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(indices kept, (n_kept, 8) float32 distributions) for an (N, 10) vote array."""
    keep, dists = [], []
    for i, row in enumerate(np.asarray(votes)):
        d = ferplus_distribution(row, mode)
        if d is not None:
            keep.append(i)
            dists.append(d)
    dist = np.asarray(dists, dtype=np.float32).reshape(-1, len(FERPLUS_EMOTIONS))
    return np.asarray(keep, dtype=np.int64), dist


def _read_label_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """The file names and (N, 10) vote counts of a label.csv; malformed rows raise DatasetError."""
    names, votes = [], []
    try:
        fh = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: point data.root at the FERPlus folder that holds "
                           f"{', '.join(FERPLUS_FOLDERS.values())}") from None
    with fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or not row[0].strip():
                continue
            if len(row) != 2 + len(FERPLUS_VOTE_COLUMNS):
                raise DatasetError(f"{path}:{lineno}: expected file, box and {len(FERPLUS_VOTE_COLUMNS)} vote "
                                   f"counts, got {len(row)} fields")
            try:
                votes.append([float(v) for v in row[2:]])
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: vote counts must be numbers, got {row[2:]}") from None
            names.append(row[0].strip())
    if not names:
        raise DatasetError(f"{path} has no label rows")
    return names, np.asarray(votes, dtype=np.float32)


def _read_grey48(path: Path) -> np.ndarray:
    """One FERPlus image as 48 x 48 grey uint8 (resized when a file is another size)."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path} named in label.csv cannot be read ({exc.strerror}); restore the image "
                           "or delete its label.csv row") from None
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
    if img is None:
        raise DatasetError(f"{path} is not a readable image; replace or delete it and its label.csv row")
    return img if img.shape == (48, 48) else cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)


def read_ferplus(root: str | Path, split: str, cache: bool = True, progress: bool = True) -> dict[str, np.ndarray]:
    """All rows of one FERPlus split: ``images`` (N, 48, 48) uint8, ``names`` and ``votes`` (N, 10)."""
    if split not in FERPLUS_FOLDERS:
        raise DatasetError(f"FERPlus split must be one of {', '.join(FERPLUS_FOLDERS)}, got {split!r}")
    folder = Path(root) / FERPLUS_FOLDERS[split]
    csv_path = folder / "label.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} is missing: point data.root at the FERPlus folder that holds "
                           f"{', '.join(FERPLUS_FOLDERS.values())}")

    def build() -> dict[str, np.ndarray]:
        names, votes = _read_label_csv(csv_path)
        images = np.empty((len(names), 48, 48), dtype=np.uint8)
        for i, name in enumerate(tqdm(names, desc=f"FERPlus {split}", unit="img", disable=not progress,
                                      leave=False)):
            images[i] = _read_grey48(folder / name)
        return {"images": images, "names": np.asarray(names), "votes": votes}

    return cached_arrays(f"ferplus-{split}", f"{CACHE_VERSION}|{file_key([csv_path])}", build, cache)
