"""Group-level face data: every face of a labelled group photo, labelled with its photo's class.

The seed system (Tan et al., EmotiW 2017) fine-tuned its face-expression CNNs on the faces of the
group photos, each face taking its photo's group label (Positive / Neutral / Negative). Here
(``data.kind: group_faces``):

- the photos come from any whole-image source of :mod:`groupmood.data.groups`: ``data.source``
  names one kind (``gaf``, ``image_csv``, ``twitter_you2015``, ``twitter_sentibank603``,
  ``emotion6``) read from ``data.root``, or is ``images`` / None with ``data.sources`` a list, with
  exactly the keys of the global branch;
- each photo's faces are found by our MTCNN through the face cache
  (:class:`~groupmood.data.cache.FaceCache`: computed once per file content, the same crops as
  inference), the crop chosen by the model: aligned 112x96 RGB for ``face_aligned`` models,
  square 48x48 grey for ``face_nonaligned`` ones (``data.grey`` turns aligned crops grey, over 3
  channels, for a model trained on grey photos such as the shipped aligned one);
- every face (or only the ``data.top_k_faces`` largest by box area, ties in detector order, as
  the pipeline's ``topK`` pooling) is one sample labelled with the photo's class;
- splits are made per PHOTO, by the same function and split files as the global branch
  (``<split_dir>/<source name>.json``, e.g. the committed ``configs/splits/global``), so no face
  of a validation or test photo is ever trained on and numbers compare with the global branch;
- a photo without a detected face gives no sample; each split prints how many there were.

Validation / test accuracy of such a dataset is **per face**. Every face keeps its photo's name
(``dataset.photos``, ``<source>:<photo name>``), so scores can be pooled per photo
(:func:`pool_by_photo`; ``groupmood evaluate`` reports both).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..config import data_options
from ..errors import ConfigError, DatasetError
from . import DataBundle
from .faces import FaceDataset
from .groups import IMAGE_DATA_KINDS, chosen_classes, source_specs, split_parts
from .transforms import batch_augment, fit_all_faces, train_transform

__all__ = ["GROUP_FACE_KINDS", "GroupFaceDataset", "build_group_face_data", "collect_faces", "photo_specs",
           "pool_by_photo", "select_faces"]

GROUP_FACE_KINDS: tuple[str, ...] = ("group_faces",)


def _top_k(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"data.top_k_faces must be a positive integer (the k largest faces of each photo) "
                          f"or null (all faces), got {value!r}")
    return int(value)


def photo_specs(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The whole-image sources of a ``group_faces`` data section (``data.source`` / ``data.sources``)."""
    kind = data.get("source") or "images"
    if kind not in IMAGE_DATA_KINDS:
        raise ConfigError(f"data.source must be a whole-image kind ({', '.join(IMAGE_DATA_KINDS)}) or null "
                          f"(data.sources), got {kind!r}")
    if kind == "images" and not data.get("sources"):
        raise ConfigError("data.kind group_faces needs data.source (one whole-image kind, with data.root) or "
                          "data.sources (a list such as {kind: emotion6, root: ../shared/data/emotion6})")
    return source_specs({**data, "kind": kind})


def select_faces(areas: Sequence[float], top_k: int | None) -> np.ndarray:
    """Indices of the faces kept from one photo, largest box first: all, or the ``top_k`` largest.

    Ties in area keep the detector's order (highest score first), as :func:`groupmood.fusion.pool`.
    """
    order = np.argsort(-np.asarray(areas, dtype=np.float64).reshape(-1), kind="stable")
    return order if top_k is None else order[:top_k]


def collect_faces(entries: Sequence[Any], aligned: bool,
                  top_k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The face crops of photos' face-cache entries (:class:`~groupmood.data.cache.CachedImage`).

    Returns (crops (M, 112, 96, 3) aligned or (M, 48, 48) grey, the photo index of each crop (M,),
    each crop's rank by box area within its photo (M,), 0 = largest). Photos without a face
    contribute nothing.
    """
    crops, photo, rank = [], [], []
    for i, entry in enumerate(entries):
        keep = select_faces([f.area for f in entry.faces], top_k)
        arr = entry.aligned if aligned else entry.grey48
        for r, k in enumerate(keep):
            crops.append(arr[k])
            photo.append(i)
            rank.append(r)
    shape = (0, 112, 96, 3) if aligned else (0, 48, 48)
    out = np.stack(crops) if crops else np.zeros(shape, np.uint8)
    return out, np.asarray(photo, dtype=np.int64), np.asarray(rank, dtype=np.int64)


def pool_by_photo(probs: np.ndarray, photos: Sequence[str],
                  labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Average face probabilities (N, C) per photo: (photo names, (P, C) mean probabilities, labels (P,)).

    Photos come in order of first appearance; ``labels`` (one per face, the same for every face of
    a photo) give each photo's label.
    """
    photos = np.asarray(photos)
    names, first, inverse = np.unique(photos, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    sums = np.zeros((len(names), np.asarray(probs).shape[1]))
    np.add.at(sums, inverse, np.asarray(probs, dtype=np.float64))
    counts = np.bincount(inverse, minlength=len(names))[:, None]
    mean = sums / counts
    out_labels = None
    if labels is not None:
        out_labels = np.asarray(labels, dtype=np.int64)[first][order]
    return names[order], mean[order], out_labels


class GroupFaceDataset(FaceDataset):
    """Faces of group photos; ``photos`` and ``sources`` name each face's photo and its source."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, classes: Sequence[str], names: Sequence[str],
                 photos: Sequence[str], sources: Sequence[str], transform: Any = None, seed: int = 0) -> None:
        super().__init__(images, targets, classes, names, False, transform, seed)
        self.photos = np.asarray(photos)
        self.sources = np.asarray(sources)
        if not len(self.photos) == len(self.sources) == len(images):
            raise ValueError(f"{len(images)} faces but {len(self.photos)} photos and {len(self.sources)} sources")


def build_group_face_data(cfg: Mapping[str, Any], info: Any, run_dir: Path, splits: Sequence[str]) -> DataBundle:
    """The DataBundle of ``data.kind: group_faces``: the faces of whole-image sources, photo labels."""
    from .cache import FaceCache, default_cache_root

    if not str(info.family).startswith("face"):
        raise DatasetError(f"model {info.name} is a {info.family} model; group_faces trains a face model "
                           "(groupmood.models.list_models(family='face_aligned' or 'face_nonaligned'))")
    data = data_options(cfg["data"])
    progress = bool(cfg["train"].get("progress", True))
    classes = chosen_classes(data)
    top_k = _top_k(data.get("top_k_faces"))
    aligned = info.family == "face_aligned"
    grey = bool(data.get("grey", False))
    split_dir = Path(data.get("split_dir") or Path(run_dir) / "splits")
    specs = photo_specs(data)
    parts = split_parts(specs, data, splits, classes, split_dir)

    cache = FaceCache(data.get("face_cache") or default_cache_root())
    wanted = list(dict.fromkeys(t.paths[i] for s in splits for t, idx in parts[s] for i in idx))
    report = cache.build(wanted, workers=int(data.get("cache_workers") or 1), progress=progress)
    if report.errors:
        bad = report.errors[0]
        raise DatasetError(f"{len(report.errors)} photo(s) cannot be read, e.g. {bad.path} ({bad.reason}); "
                           "replace them or remove them from their label file / folder")

    aug, cfg_seed = cfg["aug"], int(cfg.get("seed", 0))
    per_image = train_transform(info, aug) if aug.get("enabled", True) and not aug.get("batched", True) \
        else None
    datasets: dict[str, GroupFaceDataset] = {}
    counts: dict[str, dict[str, Any]] = {}
    for s in splits:
        paths = [t.paths[i] for t, idx in parts[s] for i in idx]
        photos = np.asarray([f"{t.source}:{t.names[i]}" for t, idx in parts[s] for i in idx])
        sources = np.asarray([t.source for t, idx in parts[s] for _ in idx])
        targets = np.asarray([classes.index(t.labels[i]) for t, idx in parts[s] for i in idx], dtype=np.int64)
        entries = [cache.get(p) for p in paths]
        crops, which, rank = collect_faces(entries, aligned, top_k)
        if aligned and grey and len(crops):
            crops = np.repeat(fit_all_faces(crops, info.input_size, 1)[..., None], 3, axis=3)
        with_face = np.bincount(which, minlength=len(paths)) > 0 if len(paths) else np.zeros(0, bool)
        per_source = {}
        for src in dict.fromkeys(sources.tolist()):
            m = sources == src
            per_source[src] = {"photos": int(m.sum()), "with_face": int((m & with_face).sum()),
                               "faces": int(m[which].sum()) if len(which) else 0}
        counts[s] = {"photos": len(paths), "with_face": int(with_face.sum()),
                     "no_face": int(len(paths) - with_face.sum()), "faces": int(len(which)),
                     "faces_per_class": {c: int((targets[which] == k).sum()) for k, c in enumerate(classes)},
                     "sources": per_source}
        c = counts[s]
        scope = "every face" if top_k is None else f"at most the {top_k} largest per photo"
        per_class = " ".join(f"{k[:3]} {v}" for k, v in c["faces_per_class"].items())
        tqdm.write(f"{s}: {c['photos']} photos, {c['with_face']} with a face -> {c['faces']} faces ({scope}; "
                   f"{per_class}); {c['no_face']} photos without a face left out")
        if not len(which):
            raise DatasetError(f"the {s} split of the group_faces data has no face ({len(paths)} photos, sources "
                               f"{', '.join(sp['name'] for sp in specs)}); adjust data.split or the sources")
        names = np.asarray([f"{photos[p]}#{r}" for p, r in zip(which, rank)])
        datasets[s] = GroupFaceDataset(fit_all_faces(crops, info.input_size, info.in_chans), targets[which], classes,
                                       names, photos[which], sources[which],
                                       per_image if s == "train" else None, cfg_seed)
    return DataBundle(datasets, classes, batch_augment(aug),
                      {"counts": counts, "split_dir": str(split_dir), "sources": [sp["name"] for sp in specs],
                       "top_k_faces": top_k, "crops": "aligned" if aligned else "grey48",
                       "accuracy": "per face", "face_cache": str(cache.dir)})
