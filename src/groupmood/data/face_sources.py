"""Face sources of labelled image files, read into a :class:`FaceTable`.

- ``folder``: ``root/<class>/*.png`` (CK+, ExpW or any user set laid out that way). With
  ``data.group_regex`` (e.g. ``^(S\\d+)`` for CK+ subjects) splits keep each group on one side.
- ``named``: images in one folder, the label in the file name (JAFFE ``KA.HA2.29.jpg``).
- ``legend``: ``root/legend.csv`` with ``image`` and ``emotion`` columns, images in
  ``root/images``; the person's name in the file name (``George_W_Bush_0012.jpg``) is the group.
- ``npz``: a file with ``images`` (N, H, W[, C]) uint8 and ``labels`` (N,) strings, optional
  ``groups`` and ``names``: the hand-over format for pre-aligned 112 x 96 crops.

Image files are decoded and fitted to the model's input once and cached (:mod:`.source_cache`), or
replaced by our MTCNN crops of each photo's largest face (``data.faces: mtcnn``, :mod:`.cache`).
"""
from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import DatasetError
from ..images import load_image
from ..paths import IMAGE_EXTENSIONS
from ..labels import canonical_expression
from .source_cache import CACHE_VERSION, cached_arrays, file_key
from .transforms import fit_all_faces, fit_face

__all__ = ["LEGEND_GROUP_REGEX", "FaceTable", "read_folder", "read_legend", "read_named", "read_npz"]

#: The person in a legend's file names: ``George_W_Bush_0012.jpg`` -> ``George_W_Bush``.
LEGEND_GROUP_REGEX = r"^(.+?)_?\d*$"


@dataclass
class FaceTable:
    """One source in memory: images (N, H, W[, C]) uint8 and, per image, a name, label and group."""

    images: np.ndarray
    names: np.ndarray
    labels: np.ndarray  # (N,) strings, or (N, 8) FERPlus distributions
    groups: np.ndarray


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
    """(image, label) rows of a legend, each image once; images given two different labels are left out."""
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
    key = f"{CACHE_VERSION}|{tuple(size)}|{in_chans}|{crop}|{file_key(files)}"
    arrays = cached_arrays(tag, key, lambda: {"images": _decode_files(paths, size, in_chans, crop, desc, progress)},
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
