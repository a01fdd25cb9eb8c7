"""Whole-image datasets for the global branch: GAF folders, CSV lists, three image-sentiment sets.

Every source becomes an :class:`ImageTable` (paths, names, group-class labels, split groups), labels
in the three group classes (:data:`~groupmood.labels.GROUP_CLASSES`). Sources (``data.kind``, or
``kind`` of each entry of ``data.sources`` when ``data.kind`` is ``images``):

- ``gaf``: ``root/{train,val,test}/{Positive,Neutral,Negative}/<image>`` (any depth below the
  class folder; names case-insensitive; ``root/<class>/`` without split folders works too). The
  folders are the split. File names are full relative paths, so ``a.jpg`` and ``a.png`` are two
  images; content is sniffed (:func:`groupmood.images.load_image`), so a PNG named .jpg reads fine.
- ``image_csv``: a CSV (``root`` is the file, or a folder holding ``labels.csv``) with ``path`` and
  ``label`` columns, optional ``split`` and ``group``; paths relative to the CSV's folder.
- ``twitter_you2015``: ``root/labels.csv`` (``path,label,agree``), You et al. 2015. Test images are
  drawn only from those at least ``test_agree`` (default 5) of 5 annotators agreed on, the
  paper's clean set, so test labels are reliable; train / val take the rest. The poster's id (the
  file name up to the first ``_``) is the split group.
- ``twitter_sentibank603``: ``root/labels.csv`` (``path,label,hashtag``), Borth et al. 2013.
- ``emotion6``: ``root/ground_truth.txt`` (valence 1-9), images in ``root/images``. Valence
  <= ``valence_cut[0]`` (4.5) is Negative, >= ``valence_cut[1]`` (5.5) Positive, else Neutral;
  ``[5, 5]`` gives two classes.

Binary sets (the two Twitter sets, GAF samples) keep the three group classes with an empty
Neutral, so the global branch's scores line up with the face branches' for fusion (class order
0 Negative, 1 Neutral, 2 Positive) and binary and 3-class sets merge. A 2-class model is
``data.classes: [Negative, Positive]``: images of the other class are left out.

Merging (the seed's "extra data"): ``data.kind: images`` with ``data.sources`` a list of
``{kind, root, name, split, valence_cut, test_agree}``; every image keeps its ``source``.
``split`` is ``auto`` (the source's own folders / column, else a seeded split), a mapping of
fractions for this source, or ``train`` / ``val`` / ``test`` to put the whole source there
(extra training data). Seeded splits are stratified by class and group-disjoint
(:func:`groupmood.data.splits.group_split`), written to ``<split_dir>/<name>.json`` and reused by
later runs (``data.split_dir``, default ``<run>/splits``).

Images are decoded once per run, only those of the splits asked for, shorter side to 256 (what
the train and eval transforms' ``Resize(256)`` would give, so they become no-ops), and kept in
memory as uint8 tensors: these sets are a few thousand photos.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from ..config import DATA_KINDS, data_options
from ..errors import ConfigError, DatasetError, ImageLoadError
from ..images import load_image
from ..paths import IMAGE_EXTENSIONS
from ..labels import GROUP_CLASSES
from ..models.registry import FAMILY_RECIPES
from . import SPLITS, DataBundle
from .splits import group_split, split_indices, write_split
from .transforms import eval_transform, seeded_call, train_transform

__all__ = [
    "IMAGE_DATA_KINDS", "SOURCE_KINDS", "GroupImageDataset", "ImageTable", "build_group_data", "chosen_classes", "decode_images",
    "group_label", "read_emotion6", "read_gaf", "read_image_csv", "read_sentibank", "read_source", "read_you2015",
    "source_specs", "split_source",
]

SOURCE_KINDS: tuple[str, ...] = ("gaf", "image_csv", "twitter_you2015", "twitter_sentibank603", "emotion6")
#: Every data.kind this module builds: one source each, or ``images`` (several, from data.sources).
IMAGE_DATA_KINDS: tuple[str, ...] = (*SOURCE_KINDS, "images")
SOURCE_KEYS: tuple[str, ...] = ("kind", "root", "name", "split", "valence_cut", "test_agree")
_SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}
_LABELS = {"negative": "Negative", "neg": "Negative", "neutral": "Neutral", "neu": "Neutral",
           "positive": "Positive", "pos": "Positive"}


def group_label(raw: str, where: str) -> str:
    """A group class name from a label spelling (``positive``, ``Pos``, ``NEGATIVE``...)."""
    label = _LABELS.get(str(raw).strip().lower())
    if label is None:
        raise DatasetError(f"label {raw!r} in {where} is not a group class; use Negative, Neutral or Positive "
                           "(any case; pos / neu / neg also work)")
    return label


# --------------------------------------------------------------------------- tables and readers

@dataclass
class ImageTable:
    """One source: image paths, unique names (relative paths), group-class labels and split groups.

    ``fixed_split`` holds the source's own split per image (GAF folders, a CSV column), or None;
    ``test_ok`` marks the images allowed in a seeded test split (None: all).
    """

    source: str
    paths: list[Path]
    names: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    fixed_split: np.ndarray | None = None
    test_ok: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __post_init__(self) -> None:
        if len(set(self.names.tolist())) != len(self.names):
            dup = next(n for n in self.names.tolist() if (self.names == n).sum() > 1)
            raise DatasetError(f"{self.source} lists {dup!r} more than once; remove the repeated rows")


def _check_exists(paths: Sequence[Path], where: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) named in {where} are missing, e.g. {', '.join(missing[:3])}; "
                           "restore them or remove their rows")


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header (column names lower-cased and stripped); checks required columns."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            rows = [{f: (v or "").strip() for f, v in zip(fields, row.values())} for row in reader]
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist; check data.root") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path} ({exc}); it must be a UTF-8 CSV with a header row") from None
    lacking = [c for c in required if c not in fields]
    if lacking:
        raise DatasetError(f"{path} lacks the column(s) {', '.join(lacking)} (has {', '.join(fields) or 'none'}); "
                           f"its header must name {', '.join(required)}")
    if not rows:
        raise DatasetError(f"{path} has no rows")
    return rows


def read_gaf(root: str | Path, source: str = "gaf") -> ImageTable:
    """``root/{train,val,test}/<class>/...`` (or ``root/<class>/...``); the folders give the split."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; a GAF-style root holds train/, val/ (and test/) with "
                           "Positive/, Neutral/, Negative/ inside")
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    split_dirs = [(_SPLIT_FOLDERS[d.name.lower()], d) for d in subdirs if d.name.lower() in _SPLIT_FOLDERS]
    layout: list[tuple[str | None, Path]] = list(split_dirs) if split_dirs else [(None, root)]
    paths, labels, splits = [], [], []
    for split, base in layout:
        for cdir in sorted(base.iterdir()):
            if not cdir.is_dir() or cdir.name.startswith("."):
                continue
            label = _LABELS.get(cdir.name.lower())
            if label is None:
                raise DatasetError(f"{cdir} is not a class folder; {base} may only hold Positive/, Neutral/ and "
                                   "Negative/ (move or rename the others)")
            for p in sorted(cdir.rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(p)
                    labels.append(label)
                    splits.append(split)
    if not paths:
        raise DatasetError(f"{root} holds no images in <split>/<class>/ or <class>/ folders (classes Positive, "
                           "Neutral, Negative)")
    names = np.asarray([p.relative_to(root).as_posix() for p in paths])
    fixed = np.asarray(splits) if split_dirs else None
    return ImageTable(source, paths, names, np.asarray(labels), names.copy(), fixed)


def read_image_csv(path: str | Path, source: str = "image_csv") -> ImageTable:
    """A CSV of ``path,label`` (optional ``split``, ``group``); a folder means its ``labels.csv``."""
    path = Path(path)
    if path.is_dir():
        path = path / "labels.csv"
    rows = _read_csv(path, ("path", "label"))
    base = path.parent
    paths = [base / r["path"] for r in rows]
    _check_exists(paths, str(path))
    names = np.asarray([Path(r["path"]).as_posix() for r in rows])
    labels = np.asarray([group_label(r["label"], f"{path} row {i + 2}") for i, r in enumerate(rows)])
    groups = np.asarray([r.get("group") or n for r, n in zip(rows, names)])
    fixed = None
    if any(r.get("split") for r in rows):
        bad = sorted({r.get("split", "").lower() for r in rows} - set(_SPLIT_FOLDERS))
        if bad:
            raise DatasetError(f"{path}: split column values must be train, val or test (every row); got {bad}")
        fixed = np.asarray([_SPLIT_FOLDERS[r["split"].lower()] for r in rows])
    return ImageTable(source, paths, names, labels, groups, fixed)


def read_you2015(root: str | Path, test_agree: int = 5, source: str = "twitter_you2015") -> ImageTable:
    """You et al. 2015 Twitter set: ``labels.csv`` (path,label,agree); test only where agree >= test_agree."""
    root = Path(root)
    if isinstance(test_agree, bool) or not isinstance(test_agree, int) or not 3 <= test_agree <= 5:
        raise ConfigError(f"data.test_agree must be 3, 4 or 5 (annotators out of 5), got {test_agree!r}")
    rows = _read_csv(root / "labels.csv", ("path", "label", "agree"))
    paths = [root / r["path"] for r in rows]
    _check_exists(paths, str(root / "labels.csv"))
    names = np.asarray([Path(r["path"]).as_posix() for r in rows])
    labels = np.asarray([group_label(r["label"], str(root / "labels.csv")) for r in rows])
    try:
        agree = np.asarray([int(r["agree"]) for r in rows])
    except ValueError:
        raise DatasetError(f"{root / 'labels.csv'}: agree must be an integer (3, 4 or 5) on every row") from None
    groups = np.asarray([Path(n).name.split("_")[0] for n in names])
    return ImageTable(source, paths, names, labels, groups, test_ok=agree >= test_agree)


def read_sentibank(root: str | Path, source: str = "twitter_sentibank603") -> ImageTable:
    """Borth et al. 2013 Twitter benchmark: ``labels.csv`` (path,label,hashtag)."""
    root = Path(root)
    rows = _read_csv(root / "labels.csv", ("path", "label"))
    paths = [root / r["path"] for r in rows]
    _check_exists(paths, str(root / "labels.csv"))
    names = np.asarray([Path(r["path"]).as_posix() for r in rows])
    labels = np.asarray([group_label(r["label"], str(root / "labels.csv")) for r in rows])
    return ImageTable(source, paths, names, labels, names.copy())


def _check_cut(cut: Any) -> tuple[float, float]:
    ok = isinstance(cut, (list, tuple)) and len(cut) == 2 and all(isinstance(v, (int, float)) for v in cut)
    if not ok or not 1 <= cut[0] <= cut[1] <= 9:
        raise ConfigError(f"valence_cut must be [negative_max, positive_min] with 1 <= negative_max <= positive_min "
                          f"<= 9 (e.g. [4.5, 5.5]; [5, 5] for two classes), got {cut!r}")
    return float(cut[0]), float(cut[1])


def read_emotion6(root: str | Path, valence_cut: Sequence[float] = (4.5, 5.5),
                  source: str = "emotion6") -> ImageTable:
    """Emotion6 (Peng et al. 2015): ``ground_truth.txt`` valence 1-9 read as 3 classes by ``valence_cut``."""
    root = Path(root)
    lo, hi = _check_cut(valence_cut)
    gt = root / "ground_truth.txt"
    try:
        lines = gt.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {gt} ({exc.strerror or exc}); data.root must be the Emotion6 folder") from None
    names, valence = [], []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("["):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            names.append(parts[0].strip())
            valence.append(float(parts[1]))
        except (IndexError, ValueError):
            raise DatasetError(f"{gt} line {i + 1} is not 'file<TAB>valence<TAB>...': {line[:80]!r}") from None
    if not names:
        raise DatasetError(f"{gt} lists no images")
    v = np.asarray(valence)
    labels = np.where(v <= lo, "Negative", np.where(v >= hi, "Positive", "Neutral"))
    paths = [root / "images" / n for n in names]
    _check_exists(paths, str(gt))
    arr = np.asarray(names)
    return ImageTable(source, paths, arr, labels, arr.copy())


def read_source(spec: Mapping[str, Any]) -> ImageTable:
    """The ImageTable of one normalised source spec (see :func:`source_specs`)."""
    kind, root, name = spec["kind"], spec["root"], spec["name"]
    if kind == "gaf":
        return read_gaf(root, name)
    if kind == "image_csv":
        return read_image_csv(root, name)
    if kind == "twitter_you2015":
        return read_you2015(root, spec["test_agree"], name)
    if kind == "twitter_sentibank603":
        return read_sentibank(root, name)
    if kind == "emotion6":
        return read_emotion6(root, spec["valence_cut"], name)
    raise ConfigError(f"unknown source kind {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")


#: The sentiment options' defaults (a source without its own valence_cut / test_agree takes these).
SENTIMENT = DATA_KINDS["images"].options


def source_specs(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sources of a ``data`` section, each a dict with every key of :data:`SOURCE_KEYS` set."""
    data = data_options(data)
    kind = data["kind"]
    if kind == "images":
        raw = data.get("sources") or []
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ConfigError("data.kind images needs data.sources, a list of mappings such as "
                              "{kind: twitter_you2015, root: ../shared/data/twitter-you2015}")
    else:
        raw = [{"kind": kind, "root": data.get("root")}]
    specs: list[dict[str, Any]] = []
    for i, src in enumerate(raw):
        where = f"data.sources[{i}]" if kind == "images" else "data"
        if not isinstance(src, Mapping):
            raise ConfigError(f"{where} must be a mapping with kind and root, got {src!r}")
        unknown = sorted(set(src) - set(SOURCE_KEYS))
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {unknown}; allowed: {', '.join(SOURCE_KEYS)}")
        if src.get("kind") not in SOURCE_KINDS:
            raise ConfigError(f"{where}.kind must be one of {', '.join(SOURCE_KINDS)}, got {src.get('kind')!r}")
        if not src.get("root"):
            raise ConfigError(f"{where}.root is not set; pass the dataset folder (e.g. --set data.root=PATH)")
        name = str(src.get("name") or src["kind"])
        if not re.fullmatch(r"[\w.-]+", name) or any(s["name"] == name for s in specs):
            raise ConfigError(f"{where}.name {name!r} must be unique and made of letters, digits, _ . - "
                              "(it names the split file)")
        split = src.get("split", "auto")
        if not (split in ("auto", *SPLITS) or isinstance(split, Mapping)):
            raise ConfigError(f"{where}.split must be auto, train, val, test or a mapping of fractions, got {split!r}")
        specs.append({"kind": src["kind"], "root": src["root"], "name": name, "split": split,
                      "valence_cut": src.get("valence_cut", data.get("valence_cut", SENTIMENT["valence_cut"])),
                      "test_agree": src.get("test_agree", data.get("test_agree", SENTIMENT["test_agree"]))})
    return specs


# --------------------------------------------------------------------------- splits

def _fractions(fractions: Mapping[str, Any], where: str) -> dict[str, float]:
    bad = sorted(set(fractions) - set(SPLITS))
    if bad:
        raise ConfigError(f"{where}: split names must be train, val and test, got {bad}")
    try:
        out = {k: float(v) for k, v in fractions.items() if v is not None and float(v) > 0}
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: fractions must be numbers, got {dict(fractions)}") from None
    if not out:
        raise ConfigError(f"{where}: needs at least one positive fraction, got {dict(fractions)}")
    return out


def _seeded_split(table: ImageTable, targets: np.ndarray, frac: Mapping[str, float],
                  seed: int) -> dict[str, np.ndarray]:
    """Stratified group-disjoint split; with ``test_ok`` the test part comes only from allowed groups."""
    if table.test_ok is None or "test" not in frac:
        return group_split(table.groups, targets, frac, seed)
    n = len(table)
    bad_groups = np.unique(table.groups[~table.test_ok])
    allowed = np.flatnonzero(table.test_ok & ~np.isin(table.groups, bad_groups))
    want = frac["test"] / sum(frac.values()) * n
    share = min(1.0, want / max(len(allowed), 1))
    test = np.zeros(0, dtype=np.int64)
    if len(allowed):
        sub = group_split(table.groups[allowed], targets[allowed], {"test": share, "rest": 1.0 - share}, seed)
        test = allowed[sub.get("test", np.zeros(0, dtype=np.int64))]
    rest = np.setdiff1d(np.arange(n), test)
    rest_frac = {k: v for k, v in frac.items() if k != "test"}
    out = {"test": np.sort(test)}
    if rest_frac and len(rest):
        out.update({k: rest[v] for k, v in group_split(table.groups[rest], targets[rest], rest_frac, seed).items()})
    return out


def split_source(table: ImageTable, mode: str | Mapping[str, Any], fractions: Mapping[str, Any], seed: int,
                 split_file: Path) -> dict[str, np.ndarray]:
    """{split: sorted indices} of one source.

    ``mode``: ``train`` / ``val`` / ``test`` puts every image there; ``auto`` uses the source's own
    split when it has one, else a seeded split by ``fractions``; a mapping is this source's fractions.
    Seeded splits are read from ``split_file`` when it exists, else made and written there.
    """
    n = len(table)
    if isinstance(mode, str) and mode in SPLITS:
        return {mode: np.arange(n)}
    if mode == "auto" and table.fixed_split is not None:
        return {s: np.flatnonzero(table.fixed_split == s) for s in SPLITS if (table.fixed_split == s).any()}
    if split_file.is_file():
        out = split_indices(split_file, table.names, f"source {table.source}",
                            "delete it or set data.split_dir to a new folder")
        unassigned = n - sum(len(v) for v in out.values())
        if unassigned:
            tqdm.write(f"note: {unassigned} image(s) of {table.source} are not in {split_file} and are left out; "
                       "delete the file to split again")
        return out
    frac = _fractions(mode if isinstance(mode, Mapping) else fractions, f"split of {table.source}")
    targets = np.asarray([GROUP_CLASSES.index(lb) for lb in table.labels], dtype=np.int64)
    out = _seeded_split(table, targets, frac, seed)
    rule = None if table.test_ok is None else "test only from images with test_ok (e.g. 5 of 5 annotators agree)"
    write_split(split_file, table.names, out, {"source": table.source, "fractions": frac, "seed": seed,
                                               "stratified_by": "group class", "test_rule": rule})
    return out


# --------------------------------------------------------------------------- decoding and the dataset

def _decode_one(path: Path, short_side: int) -> Tensor:
    try:
        img = load_image(path)
    except ImageLoadError as exc:
        raise DatasetError(f"{exc}; replace the file or remove it from its label file / folder") from None
    t = torch.from_numpy(img).permute(2, 0, 1)
    return TF.resize(t, [short_side], antialias=True).contiguous()


def decode_images(paths: Sequence[Path], short_side: int = FAMILY_RECIPES["global"]["resize"], workers: int = 0,
                  progress: bool = True, desc: str = "decode") -> list[Tensor]:
    """Decode each file (content sniffed, EXIF applied) to a (3, H, W) uint8 tensor, shorter side ``short_side``.

    ``workers`` > 0 decodes in that many threads (PIL releases the GIL); the order is kept.
    """
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    out: list[Tensor] = []
    with bar:
        if workers > 0:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for t in pool.map(lambda p: _decode_one(p, short_side), paths):
                    out.append(t)
                    bar.update(1)
        else:
            for p in paths:
                out.append(_decode_one(p, short_side))
                bar.update(1)
    return out


class GroupImageDataset(Dataset):
    """Whole images in memory yielding ``(uint8 (3, H, W) tensor, class index)``; keeps each image's source.

    The per-image ``transform`` (torchvision v2) is seeded by (seed, epoch, index), so an epoch's
    crops and flips do not depend on worker count or on where a run was resumed.
    """

    def __init__(self, images: Sequence[Tensor], targets: np.ndarray, classes: Sequence[str],
                 names: Sequence[str], sources: Sequence[str],
                 transform: Callable[[Tensor], Tensor] | None = None, seed: int = 0) -> None:
        if not (len(images) == len(targets) == len(names) == len(sources)):
            raise ValueError(f"{len(images)} images, {len(targets)} targets, {len(names)} names and "
                             f"{len(sources)} sources must match")
        self.images = list(images)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = tuple(classes)
        self.names = np.asarray(names)
        self.sources = np.asarray(sources)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    @property
    def labels(self) -> np.ndarray:
        """Class indices (N,)."""
        return self.targets

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (re-seeds the per-image transform)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i]
        if self.transform is not None:
            x = seeded_call(self.transform, x, self.seed, self.epoch, i)
        return x, int(self.targets[i])


# --------------------------------------------------------------------------- builder

def chosen_classes(data: Mapping[str, Any]) -> tuple[str, ...]:
    """The group classes of ``data.classes`` in :data:`GROUP_CLASSES` order (all three when unset)."""
    chosen = data.get("classes")
    if chosen is None:
        return GROUP_CLASSES
    try:
        names = {group_label(c, "data.classes") for c in chosen}
    except TypeError:
        raise ConfigError(f"data.classes must be a list of group classes, got {chosen!r}") from None
    if len(names) < 2 or len(names) != len(list(chosen)):
        raise ConfigError(f"data.classes needs two or three distinct group classes, got {list(chosen)}")
    return tuple(c for c in GROUP_CLASSES if c in names)


def split_parts(specs: Sequence[Mapping[str, Any]], data: Mapping[str, Any], splits: Sequence[str],
                classes: Sequence[str], split_dir: Path) -> dict[str, list[tuple[ImageTable, np.ndarray]]]:
    """Per split, each source's table with the indices of its photos there (of the wanted classes).

    Each source's split is read from (or written once to) ``split_dir/<name>.json``; ``"all"``
    takes every photo.
    """
    seed = int(data.get("split_seed", 0))
    parts: dict[str, list[tuple[ImageTable, np.ndarray]]] = {s: [] for s in splits}
    for spec in specs:
        table = read_source(spec)
        if "all" in splits:
            by_split = {"all": np.arange(len(table))}
        else:
            by_split = split_source(table, spec["split"], data.get("split") or {}, seed,
                                    split_dir / f"{spec['name']}.json")
        for s in splits:
            idx = by_split.get(s, np.zeros(0, dtype=np.int64))
            parts[s].append((table, idx[np.isin(table.labels[idx], classes)]))
    return parts


def build_group_data(cfg: Mapping[str, Any], info: Any, run_dir: Path, splits: Sequence[str]) -> DataBundle:
    """The DataBundle of whole-image data (``data.kind`` one of :data:`IMAGE_DATA_KINDS`)."""
    if info.family != "global":
        raise DatasetError(f"model {info.name} is a {info.family} model; whole-image datasets need a global "
                           "model (groupmood.models.list_models(family='global'))")
    data = data_options(cfg["data"])
    progress = bool(cfg["train"].get("progress", True))
    classes = chosen_classes(data)
    split_dir = Path(data.get("split_dir") or Path(run_dir) / "splits")
    parts = split_parts(source_specs(data), data, splits, classes, split_dir)
    counts = {s: {t.source: {c: int((t.labels[idx] == c).sum()) for c in classes} for t, idx in parts[s]}
              for s in splits}
    aug, cfg_seed = cfg["aug"], int(cfg.get("seed", 0))
    workers = int(data.get("workers") or 0)
    datasets: dict[str, GroupImageDataset] = {}
    for s in splits:
        paths = [t.paths[i] for t, idx in parts[s] for i in idx]
        if not paths:
            raise DatasetError(f"the {s} split of the {data['kind']} data is empty (sources: "
                               f"{', '.join(t.source for t, _ in parts[s])}); adjust data.split or the sources")
        names = [f"{t.source}:{t.names[i]}" for t, idx in parts[s] for i in idx]
        sources = [t.source for t, idx in parts[s] for _ in idx]
        targets = np.asarray([classes.index(t.labels[i]) for t, idx in parts[s] for i in idx], dtype=np.int64)
        transform = train_transform(info, aug) if s == "train" else eval_transform(info)
        images = decode_images(paths, info.resize, workers, progress, desc=f"decode {s}")
        datasets[s] = GroupImageDataset(images, targets, classes, names, sources, transform, cfg_seed)
        per_source = "; ".join(f"{src} " + " ".join(f"{c[:3]} {n}" for c, n in cc.items())
                               for src, cc in counts[s].items())
        tqdm.write(f"{s}: {len(paths)} images ({per_source})")
    return DataBundle(datasets, classes, None, {"counts": counts, "split_dir": str(split_dir),
                                                "sources": [spec["name"] for spec in source_specs(data)]})
