"""Face expression datasets: FERPlus, folder-per-class, file-name labels, CSV legend, pre-cropped .npz.

:func:`build_face_data` is the builder of every face ``data.kind``. Every source is read once into
one uint8 array at the model's input size (48 x 48 grey for the non-aligned nets, 112 x 96 RGB for
the aligned ones) and cached as an ``.npz`` (:mod:`.source_cache`), so a later run skips the
decoding. Sources:

- ``ferplus`` (:mod:`.ferplus`): the training split uses ``data.mode`` (majority, probability,
  crossentropy), validation and test always majority.
- ``folder``, ``named``, ``legend``, ``npz`` (:mod:`.face_sources`): labelled image files, or
  pre-aligned crops in one file.

Labels are read through a :class:`ClassMap`: train on the 8 expressions (read as 3 valences
later, via :func:`groupmood.labels.to_valence`), or map them to the 3 group classes directly
(``data.target: valence``, ``data.surprise`` choosing where surprise goes). Sources other than
FERPlus are split by :func:`~groupmood.data.splits.group_split`, and the split is written to a
JSON file that later runs reuse (:func:`~groupmood.data.splits.resolve_split`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import data_options
from ..errors import DatasetError
from ..labels import FERPLUS_EMOTIONS, GROUP_CLASSES, canonical_expression, valence_map, valence_matrix
from . import SPLITS, DataBundle
from .face_sources import FaceTable, read_folder, read_legend, read_named, read_npz
from .ferplus import FERPLUS_MODES, ferplus_targets, read_ferplus
from .splits import resolve_split
from .transforms import batch_augment, fit_all_faces, seeded_call, train_transform

__all__ = ["ClassMap", "FaceDataset", "build_face_data"]


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
