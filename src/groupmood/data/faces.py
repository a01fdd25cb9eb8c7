"""Face expression datasets: FERPlus, folder-per-class, CSV legend, pre-cropped .npz.

Every source is read once into one uint8 array at the model's input size (48 x 48 grey for the
non-aligned nets, 112 x 96 RGB for the aligned ones) and cached as an ``.npz`` under
``groupmood.weights.home()/datasets/``, keyed by the files' paths, sizes and modification times,
so a second run starts in seconds. Sources:

- ``ferplus``: ``root/FER2013{Train,Valid,Test}/label.csv`` rows ``file, "(0, 0, 48, 48)", 10 vote
  counts``. Labels are cleaned exactly as in the FERPlus reference (:func:`ferplus_distribution`);
  the training split uses ``data.mode`` (majority, probability, crossentropy), validation and test
  always majority.
- ``folder``: ``root/<class>/*.png`` (CK+, ExpW or any user set laid out that way). With
  ``data.group_regex`` (e.g. ``^(S\\d+)`` for CK+ subjects) splits keep each group on one side.
- ``legend``: ``root/legend.csv`` with ``image`` and ``emotion`` columns, images in
  ``root/images``; the person's name in the file name (``George_W_Bush_0012.jpg``) is the group.
- ``npz``: a file with ``images`` (N, H, W[, C]) uint8 and ``labels`` (N,) strings, optional
  ``groups`` and ``names``: the hand-over format for pre-aligned 112 x 96 crops (until the face
  cache feeds training directly).

Labels are read through a :class:`ClassMap`: train on the 8 expressions (read as 3 valences
later, via :func:`groupmood.labels.to_valence`), or map them to the 3 group classes directly
(``data.target: valence``, ``data.surprise`` choosing where surprise goes). Sources other than
FERPlus are split by :func:`group_split`, and the split is written to a JSON file that later runs
reuse (:func:`resolve_split`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..config import data_options
from ..errors import DatasetError
from ..io import atomic_write
from ..images import IMAGE_EXTENSIONS, load_image
from ..labels import FERPLUS_EMOTIONS, GROUP_CLASSES, canonical_expression, valence_map, valence_matrix
from ..weights import home
from . import SPLITS, DataBundle
from .transforms import batch_augment, fit_face, seeded_call, train_transform

__all__ = [
    "FERPLUS_FOLDERS", "FERPLUS_MODES", "FERPLUS_VOTE_COLUMNS", "ClassMap", "FaceDataset", "FaceTable",
    "build_face_data", "ferplus_distribution", "ferplus_targets", "fit_all_faces", "group_split", "read_ferplus",
    "read_folder", "read_legend", "read_npz", "read_split", "resolve_split", "write_split",
]

FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (*FERPLUS_EMOTIONS, "unknown", "NF")
FERPLUS_FOLDERS: dict[str, str] = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
FERPLUS_MODES: tuple[str, ...] = ("majority", "probability", "crossentropy")
LEGEND_GROUP_REGEX = r"^(.+?)_?\d*$"
_CACHE_VERSION = "1"


# --------------------------------------------------------------------------- FERPlus labels

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


# --------------------------------------------------------------------------- class map

@dataclass(frozen=True)
class ClassMap:
    """Maps source labels (expression names, or group classes) to the training classes.

    ``target="expressions"`` trains on ``classes`` (default the 8 FERPlus emotions);
    ``target="valence"`` trains on the 3 group classes, expressions mapped by
    :func:`~groupmood.labels.valence_map` (``surprise`` picks the class of surprise).
    """

    target: str = "expressions"
    classes: tuple[str, ...] = FERPLUS_EMOTIONS
    surprise: str = "Positive"

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> ClassMap:
        """The class map of a ``data`` config section; bad values raise DatasetError."""
        target, surprise = data.get("target", "expressions"), data.get("surprise", "Positive")
        if target not in ("expressions", "valence"):
            raise DatasetError(f"data.target must be 'expressions' or 'valence', got {target!r}")
        if surprise not in GROUP_CLASSES:
            raise DatasetError(f"data.surprise must be one of {', '.join(GROUP_CLASSES)}, got {surprise!r}")
        if target == "valence":
            return cls("valence", GROUP_CLASSES, surprise)
        classes = tuple(canonical_expression(c) for c in (data.get("classes") or FERPLUS_EMOTIONS))
        unknown = [c for c in classes if c not in FERPLUS_EMOTIONS]
        if unknown or len(set(classes)) != len(classes) or not classes:
            raise DatasetError(f"data.classes must be distinct names out of {', '.join(FERPLUS_EMOTIONS)}; "
                               f"got {list(data.get('classes'))}")
        return cls("expressions", classes, surprise)

    def _class_of(self, label: str) -> str | None:
        name = canonical_expression(label)
        if self.target == "expressions":
            return name if name in self.classes else None
        groups = {g.lower(): g for g in GROUP_CLASSES}
        return groups.get(name) or valence_map(self.surprise).get(name)

    def index(self, labels: Sequence[str], source: str = "the dataset") -> np.ndarray:
        """Class indices of string labels; a label outside the classes raises DatasetError."""
        lookup: dict[str, int] = {}
        out = np.empty(len(labels), dtype=np.int64)
        for i, label in enumerate(labels):
            if label not in lookup:
                cls = self._class_of(label)
                if cls is None:
                    raise DatasetError(
                        f"label {label!r} in {source} is not one of the training classes "
                        f"{', '.join(self.classes)}; set data.classes (or data.target: valence), "
                        "or remove those images")
                lookup[label] = self.classes.index(cls)
            out[i] = lookup[label]
        return out

    def project(self, dist: np.ndarray) -> np.ndarray:
        """(N, 8) FERPlus distributions -> (N, len(classes)), renormalised (rows may become 0)."""
        if self.target == "valence":
            mat = valence_matrix(FERPLUS_EMOTIONS, valence_map(self.surprise)).numpy()
            return (dist @ mat).astype(np.float32)
        cols = [FERPLUS_EMOTIONS.index(c) for c in self.classes]
        out = dist[:, cols]
        mass = out.sum(axis=1, keepdims=True)
        return np.divide(out, mass, out=np.zeros_like(out), where=mass > 0).astype(np.float32)


# --------------------------------------------------------------------------- caching and decoding

def _cache_dir() -> Path:
    return home() / "datasets"


def _cached(tag: str, key: str, build: Callable[[], dict[str, np.ndarray]], enabled: bool) -> dict[str, np.ndarray]:
    """Arrays from ``<home>/datasets/<tag>-<key>.npz``, built (and written atomically) when absent."""
    if not enabled:
        return build()
    path = _cache_dir() / f"{tag}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    arrays = build()
    try:
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        tqdm.write(f"note: could not write the dataset cache {path} ({exc}); continuing without it")
    return arrays


def _file_key(paths: Sequence[Path]) -> str:
    parts = []
    for p in paths:
        st = p.stat()
        parts.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


def _read_grey48(path: Path) -> np.ndarray:
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path} named in label.csv cannot be read ({exc.strerror}); restore the image "
                           "or delete its label.csv row") from None
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
    if img is None:
        raise DatasetError(f"{path} is not a readable image; replace or delete it and its label.csv row")
    return img if img.shape == (48, 48) else cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)


def _decode_files(paths: Sequence[Path], size: Sequence[int], in_chans: int, crop: Sequence[float] | None,
                  desc: str, progress: bool) -> np.ndarray:
    """Decode and fit each file to (size, in_chans) into one uint8 array."""
    shape = (len(paths), int(size[0]), int(size[1])) + ((in_chans,) if in_chans > 1 else ())
    out = np.empty(shape, dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, unit="img", disable=not progress, leave=False)):
        try:
            img = load_image(p)
        except Exception as exc:  # ImageLoadError and decoder errors: one clear dataset message
            raise DatasetError(f"cannot read {p} ({exc}); replace or remove it") from None
        out[i] = fit_face(img, size, in_chans, crop).reshape(shape[1:])
    return out


# --------------------------------------------------------------------------- sources

@dataclass
class FaceTable:
    """One source in memory: images (N, H, W[, C]) uint8 and, per image, a name, label and group."""

    images: np.ndarray
    names: np.ndarray
    labels: np.ndarray  # (N,) strings, or (N, 8) FERPlus distributions
    groups: np.ndarray


def _read_label_csv(path: Path) -> tuple[list[str], np.ndarray]:
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

    return _cached(f"ferplus-{split}", f"{_CACHE_VERSION}|{_file_key([csv_path])}", build, cache)


def _group_of(stems: Sequence[str], regex: str | None, names: np.ndarray) -> np.ndarray:
    """Group keys: group 1 (or the whole match) of ``regex`` on each stem; without a regex the names."""
    if not regex:
        return names
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise DatasetError(f"data.group_regex {regex!r} is not a valid regular expression: {exc}") from None
    out = []
    for stem in stems:
        m = pattern.search(stem)
        out.append((m.group(1) if m.groups() else m.group(0)) if m else stem)
    return np.asarray(out)


def read_folder(root: str | Path, size: Sequence[int], in_chans: int, group_regex: str | None = None,
                crop: Sequence[float] | None = None, cache: bool = True, progress: bool = True,
                faces: str = "file") -> FaceTable:
    """``root/<class>/<image>`` into a FaceTable (labels are the folder names, canonicalised).

    ``faces="mtcnn"`` detects each photo's largest face and uses our pipeline's crop of it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; data.root must hold one sub-folder of images per class")
    paths = sorted(p for d in root.iterdir() if d.is_dir() for p in d.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DatasetError(f"{root} has no images in class sub-folders (expected root/<class>/<image>)")
    names = np.asarray([f"{p.parent.name}/{p.name}" for p in paths])
    labels = np.asarray([canonical_expression(p.parent.name) for p in paths])
    table = FaceTable(np.zeros(0, np.uint8), names, labels, _group_of([p.stem for p in paths], group_regex, names))
    return _with_images(table, paths, "folder", size, in_chans, crop, cache, progress, faces, root.name)


def read_named(root: str | Path, size: Sequence[int], in_chans: int, label_regex: str,
               group_regex: str | None = None, crop: Sequence[float] | None = None, cache: bool = True,
               progress: bool = True, faces: str = "file") -> FaceTable:
    """Images in one folder with the label in the file name (JAFFE ``KA.HA2.29.jpg``: ``label_regex``'s group 1)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder of images")
    try:
        pattern = re.compile(label_regex)
    except (re.error, TypeError) as exc:
        raise DatasetError(f"data.label_regex {label_regex!r} is not a valid regular expression ({exc})") from None
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    matches = [pattern.search(p.name) for p in paths]
    unmatched = [p.name for p, m in zip(paths, matches) if not m]
    if unmatched or not paths:
        raise DatasetError(f"data.label_regex {label_regex!r} finds no label in {len(unmatched)} of {len(paths)} "
                           f"files of {root}, e.g. {unmatched[:3]}")
    names = np.asarray([p.name for p in paths])
    labels = np.asarray([canonical_expression(m.group(1)) for m in matches])
    table = FaceTable(np.zeros(0, np.uint8), names, labels, _group_of([p.stem for p in paths], group_regex, names))
    return _with_images(table, paths, "named", size, in_chans, crop, cache, progress, faces, root.name)


def _legend_rows(csv_path: Path) -> list[tuple[str, str]]:
    try:
        fh = open(csv_path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{csv_path} is missing; set data.root (and data.csv) to the legend's folder") from None
    with fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
        if "image" not in fields or "emotion" not in fields:
            raise DatasetError(f"{csv_path} needs 'image' and 'emotion' columns, has {reader.fieldnames}")
        rows = [(row[fields["image"]].strip(), row[fields["emotion"]].strip()) for row in reader
                if (row.get(fields["image"]) or "").strip()]
    labels: dict[str, set[str]] = {}
    for name, label in rows:
        labels.setdefault(name, set()).add(canonical_expression(label))
    conflicts = sorted(n for n, ls in labels.items() if len(ls) > 1)
    if conflicts:
        tqdm.write(f"note: {csv_path} gives {len(conflicts)} image(s) two different labels; left out: "
                   f"{', '.join(conflicts[:5])}")
    seen: set[str] = set()
    out = []
    for name, label in rows:
        if name not in seen and len(labels[name]) == 1:
            out.append((name, label))
        seen.add(name)
    return out


def read_legend(root: str | Path, size: Sequence[int], in_chans: int, csv_name: str = "legend.csv",
                image_dir: str = "images", group_regex: str | None = LEGEND_GROUP_REGEX,
                crop: Sequence[float] | None = None, cache: bool = True, progress: bool = True,
                faces: str = "file") -> FaceTable:
    """A CSV legend (``image``, ``emotion`` columns) into a FaceTable; groups from the file names.

    ``faces="mtcnn"`` detects each photo's largest face and uses our pipeline's crop of it.
    """
    root = Path(root)
    rows = _legend_rows(root / csv_name)
    paths = [root / image_dir / name for name, _ in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) named in {root / csv_name} are missing, e.g. "
                           f"{', '.join(missing[:3])}; fix data.image_dir or the legend")
    names = np.asarray([name for name, _ in rows])
    labels = np.asarray([canonical_expression(label) for _, label in rows])
    stems = [Path(name).stem for name, _ in rows]
    table = FaceTable(np.zeros(0, np.uint8), names, labels, _group_of(stems, group_regex or LEGEND_GROUP_REGEX, names))
    return _with_images(table, [root / csv_name, *paths], "legend", size, in_chans, crop, cache, progress,
                        faces, root.name)


def _with_images(table: FaceTable, files: Sequence[Path], tag: str, size: Sequence[int], in_chans: int,
                 crop: Sequence[float] | None, cache: bool, progress: bool, faces: str, desc: str) -> FaceTable:
    """Fill a table's images: the files decoded and fitted, or our MTCNN crops of their largest face.

    ``files`` may start with label files that only key the cache; the images are its last rows.
    """
    paths = list(files[len(files) - len(table.names):])
    if faces == "mtcnn":
        from .cache import detected_crops

        crops, found = detected_crops(paths, aligned=in_chans == 3, progress=progress)
        if not found.all():
            print(f"note: MTCNN found no face in {int((~found).sum())} of {len(paths)} {desc} images; "
                  "they are left out")
        return FaceTable(fit_all_faces(crops, size, in_chans), table.names[found], table.labels[found], table.groups[found])
    if faces != "file":
        raise DatasetError(f"data.faces must be file or mtcnn, got {faces!r}")
    key = f"{_CACHE_VERSION}|{tuple(size)}|{in_chans}|{crop}|{_file_key(files)}"
    arrays = _cached(tag, key, lambda: {"images": _decode_files(paths, size, in_chans, crop, desc, progress)},
                     cache)
    return FaceTable(arrays["images"], table.names, table.labels, table.groups)


def read_npz(path: str | Path, size: Sequence[int], in_chans: int) -> FaceTable:
    """Pre-cropped faces from an .npz with ``images`` and ``labels`` (optional ``groups``, ``names``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path} as .npz ({exc}); data.root must be the crops file") from None
    if "images" not in arrays or "labels" not in arrays:
        raise DatasetError(f"{path} needs 'images' (N, H, W[, C]) uint8 and 'labels' (N,) arrays, "
                           f"has {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"].astype(str)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise DatasetError(f"{path}: 'images' must be uint8 (N, H, W[, C]) with one label each; got "
                           f"{images.dtype} {images.shape} and {len(labels)} labels")
    images = fit_all_faces(images, size, in_chans)
    names = arrays["names"].astype(str) if "names" in arrays else np.asarray([f"{i:07d}" for i in range(len(labels))])
    groups = arrays["groups"].astype(str) if "groups" in arrays else names
    return FaceTable(images, names, np.asarray([canonical_expression(s) for s in labels]), groups)


# --------------------------------------------------------------------------- splits

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


# --------------------------------------------------------------------------- the dataset

class FaceDataset(Dataset):
    """In-memory faces yielding ``(uint8 (C, H, W) tensor, target)``.

    ``targets`` are class indices (N,) or distributions (N, C). With ``sample_labels`` (FERPlus
    probability mode) each epoch draws one label per image from its distribution, seeded by
    (seed, epoch). A per-image ``transform`` (torchvision v2) is seeded by (seed, epoch, index), so
    the data of an epoch never depends on worker count or on where a run was resumed.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, classes: Sequence[str],
                 names: Sequence[str] | None = None, sample_labels: bool = False,
                 transform: Callable[[Tensor], Tensor] | None = None, seed: int = 0) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.classes = tuple(classes)
        self.names = np.asarray(names) if names is not None else np.arange(len(images)).astype(str)
        self.sample_labels = sample_labels and targets.ndim == 2
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self._sampled: np.ndarray | None = None
        self.set_epoch(0)

    @property
    def labels(self) -> np.ndarray:
        """Hard labels (N,): the class indices, or the argmax of the distributions."""
        return self.targets if self.targets.ndim == 1 else self.targets.argmax(axis=1)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: re-draws sampled labels and re-seeds the per-image transform."""
        self.epoch = int(epoch)
        if self.sample_labels:
            rng = np.random.default_rng([self.seed, self.epoch, 0x1ABE1])
            cdf = np.cumsum(self.targets, axis=1)
            u = rng.random(len(cdf))[:, None] * cdf[:, -1:]
            self._sampled = np.minimum((u >= cdf).sum(axis=1), cdf.shape[1] - 1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor | int]:
        img = torch.from_numpy(self.images[i])
        x = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
        if self.transform is not None:
            x = seeded_call(self.transform, x, self.seed, self.epoch, i)
        if self._sampled is not None:
            return x, int(self._sampled[i])
        if self.targets.ndim == 2:
            return x, torch.from_numpy(self.targets[i])
        return x, int(self.targets[i])



# --------------------------------------------------------------------------- builder

def _check_crop(crop: Any) -> list[float] | None:
    if crop is None:
        return None
    ok = isinstance(crop, (list, tuple)) and len(crop) == 4 and all(isinstance(v, (int, float)) for v in crop)
    if not ok or not (0 <= crop[0] < crop[2] <= 1 and 0 <= crop[1] < crop[3] <= 1):
        raise DatasetError(f"data.crop must be [left, top, right, bottom] fractions in [0, 1] with left < right "
                           f"and top < bottom, e.g. [0.07, 0, 0.93, 1]; got {crop!r}")
    return [float(v) for v in crop]


def _load_table(data: Mapping[str, Any], info: Any, progress: bool) -> FaceTable:
    kind, root = data["kind"], data.get("root")
    if not root:
        raise DatasetError(f"data.root is not set; pass --set data.root=PATH to the {kind} dataset")
    size, chans, cache = info.input_size, info.in_chans, bool(data.get("cache", True))
    crop = _check_crop(data.get("crop"))
    faces = data.get("faces", "file")
    if kind == "folder":
        return read_folder(root, size, chans, data.get("group_regex"), crop, cache, progress, faces)
    if kind == "named":
        return read_named(root, size, chans, data.get("label_regex") or r"^[A-Za-z]+\.([A-Za-z]{2})",
                          data.get("group_regex"), crop, cache, progress, faces)
    if kind == "legend":
        return read_legend(root, size, chans, data.get("csv", "legend.csv"), data.get("image_dir", "images"),
                           data.get("group_regex"), crop, cache, progress, faces)
    if kind == "npz":
        return read_npz(root, size, chans)
    raise DatasetError(f"data.kind {kind!r} is not a face source; use ferplus, folder, named, legend or npz")


def fit_all_faces(images: np.ndarray, size: Sequence[int], in_chans: int) -> np.ndarray:
    """Faces (N, H, W[, C]) -> the model's (size, in_chans); unchanged when they already fit."""
    want = (int(size[0]), int(size[1])) + ((in_chans,) if in_chans > 1 else ())
    if images.shape[1:] == want:
        return images
    return np.stack([fit_face(img, size, in_chans).reshape(want) for img in images])


def _ferplus_datasets(cfg: Mapping[str, Any], info: Any, cmap: ClassMap, splits: Sequence[str],
                      make: Callable[..., FaceDataset]) -> dict[str, FaceDataset]:
    data, progress = cfg["data"], bool(cfg["train"].get("progress", True))
    if not data.get("root"):
        raise DatasetError("data.root is not set; pass --set data.root=PATH/TO/ferplus")
    mode = data.get("mode", "majority")
    if mode not in FERPLUS_MODES:
        raise DatasetError(f"data.mode must be one of {', '.join(FERPLUS_MODES)}, got {mode!r}")
    out = {}
    for split in (SPLITS if "all" in splits else splits):
        raw = read_ferplus(data["root"], split, bool(data.get("cache", True)), progress)
        split_mode = mode if split == "train" else "majority"
        keep, dist = ferplus_targets(raw["votes"], split_mode)
        dist = cmap.project(dist)
        ok = dist.sum(axis=1) > 0
        keep, dist = keep[ok], dist[ok]
        targets = dist if split_mode != "majority" else dist.argmax(axis=1).astype(np.int64)
        out[split] = make(fit_all_faces(raw["images"][keep], info.input_size, info.in_chans), targets, raw["names"][keep], split,
                          sample_labels=split_mode == "probability")
    return out


def _table_datasets(cfg: Mapping[str, Any], info: Any, cmap: ClassMap, run_dir: Path,
                    splits: Sequence[str], make: Callable[..., FaceDataset]) -> dict[str, FaceDataset]:
    data = cfg["data"]
    table = _load_table(data, info, bool(cfg["train"].get("progress", True)))
    targets = cmap.index(table.labels, f"{data['kind']} dataset {data['root']}")
    if "all" in splits:
        return {"all": make(table.images, targets, table.names, "all")}
    idx = resolve_split(table, targets, data, run_dir, f"{data['kind']}:{data['root']}", create="train" in splits)
    missing = [s for s in splits if s not in idx]
    if missing:
        raise DatasetError(f"the split has no {', '.join(missing)} part (it has {', '.join(idx)}); "
                           "adjust data.split or use --split all")
    return {s: make(table.images[idx[s]], targets[idx[s]], table.names[idx[s]], s) for s in splits}


def build_face_data(cfg: Mapping[str, Any], info: Any, run_dir: Path, splits: Sequence[str]) -> DataBundle:
    """The DataBundle of a face source (``data.kind`` ferplus, folder, legend or npz)."""
    if not str(info.family).startswith("face"):
        raise DatasetError(f"model {info.name} is a {info.family} model; face datasets need a face model")
    cfg = {**cfg, "data": data_options(cfg["data"])}
    cmap = ClassMap.from_config(cfg["data"])
    aug, seed = cfg["aug"], int(cfg.get("seed", 0))
    per_image = None
    if aug.get("enabled", True) and not aug.get("batched", True):
        per_image = train_transform(info, aug)

    def make(images: np.ndarray, targets: np.ndarray, names: np.ndarray, split: str,
             sample_labels: bool = False) -> FaceDataset:
        if len(images) == 0:
            raise DatasetError(f"the {split} split of {cfg['data']['kind']}:{cfg['data']['root']} is empty")
        return FaceDataset(images, targets, cmap.classes, names, sample_labels,
                           per_image if split == "train" else None, seed)

    if cfg["data"]["kind"] == "ferplus":
        datasets = _ferplus_datasets(cfg, info, cmap, splits, make)
    else:
        datasets = _table_datasets(cfg, info, cmap, run_dir, splits, make)
    return DataBundle(datasets, cmap.classes, batch_augment(aug),
                      {"target": cmap.target, "surprise": cmap.surprise})
