"""What labelled group photos give once, for fitting a bundle's heads, calibration and fusion.

:func:`collect_evidence` runs a recognizer over labelled photos once and keeps, per photo, each
branch's pooled (uncalibrated) probabilities and whether it spoke, the faces' trunk embeddings (what a
group head reads), the faces' sizes and, optionally, whole-image trunk features (what a scene head
reads). :class:`Evidence` holds them, joins sets (:meth:`Evidence.concat`, ``sets`` naming each photo's
set) and saves them as one ``.npz``, so the choices of :mod:`groupmood.engine.group_cv` and
:mod:`groupmood.engine.regime_cv` cost seconds, not a pass over the photos.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..errors import DatasetError
from ..images import DEFAULT_MAX_PIXELS, load_batches

if TYPE_CHECKING:
    from ..pipeline import GroupEmotionRecognizer

__all__ = ["Evidence", "collect_evidence"]


@dataclass
class Evidence:
    """Per photo: label, each branch's pooled probabilities and whether it spoke, face embeddings, sizes."""

    names: list[str]
    labels: np.ndarray
    probs: dict[str, np.ndarray]
    spoke: dict[str, np.ndarray]
    face_branches: tuple[str, ...]
    embeddings: list[np.ndarray]
    face_fracs: list[np.ndarray]
    images: np.ndarray | None = None  # (N, D) whole-image trunk features, for the scene head
    sets: np.ndarray | None = None  # (N,) the data set of each photo: choices weigh every set alike

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: np.ndarray | Sequence[int]) -> Evidence:
        idx = np.asarray(idx, dtype=np.int64)
        return Evidence([self.names[i] for i in idx], self.labels[idx], {b: p[idx] for b, p in self.probs.items()},
                        {b: s[idx] for b, s in self.spoke.items()}, self.face_branches,
                        [self.embeddings[i] for i in idx], [self.face_fracs[i] for i in idx],
                        None if self.images is None else self.images[idx],
                        None if self.sets is None else self.sets[idx])

    @classmethod
    def concat(cls, parts: Sequence[Evidence]) -> Evidence:
        """The photos of several evidence sets in one (same branches; image features in all or none)."""
        first = parts[0]
        if any(set(p.probs) != set(first.probs) or p.face_branches != first.face_branches for p in parts):
            raise DatasetError("evidence sets with other branches cannot be joined; collect them with one bundle")
        has_images = [p.images is not None for p in parts]
        if any(has_images) and not all(has_images):
            raise DatasetError("some evidence sets have whole-image features and some do not")
        return cls([n for p in parts for n in p.names], np.concatenate([p.labels for p in parts]),
                   {b: np.concatenate([p.probs[b] for p in parts]) for b in first.probs},
                   {b: np.concatenate([p.spoke[b] for p in parts]) for b in first.spoke}, first.face_branches,
                   [e for p in parts for e in p.embeddings], [f for p in parts for f in p.face_fracs],
                   np.concatenate([p.images for p in parts]) if all(has_images) else None,
                   None if all(p.sets is None for p in parts)
                   else np.concatenate([p.sets if p.sets is not None else np.full(len(p), "") for p in parts]))

    def without(self, branches: Sequence[str]) -> Evidence:
        """The same photos without some branches' probabilities (branches kept out of calibration and fusion)."""
        drop = set(branches)
        unknown = sorted(drop - set(self.probs))
        if unknown:
            raise DatasetError(f"no branch {', '.join(unknown)} in the evidence ({', '.join(self.probs)})")
        return Evidence(self.names, self.labels, {b: p for b, p in self.probs.items() if b not in drop},
                        {b: s for b, s in self.spoke.items() if b not in drop},
                        tuple(b for b in self.face_branches if b not in drop), self.embeddings, self.face_fracs,
                        self.images, self.sets)

    def save(self, path: str | Path) -> None:
        """One compressed .npz (embeddings concatenated with per-photo counts)."""
        from ..io import atomic_write

        counts = np.array([len(e) for e in self.embeddings], dtype=np.int64)
        dim = max((e.shape[1] for e in self.embeddings if e.ndim == 2 and len(e)), default=0)
        emb = np.concatenate([e.reshape(-1, dim) for e in self.embeddings]) if dim else np.zeros((0, 0))
        arrays = {"names": np.array(self.names), "labels": self.labels, "counts": counts, "embeddings": emb,
                  "fracs": np.concatenate([f.reshape(-1) for f in self.face_fracs]) if self.face_fracs else np.zeros(0),
                  "face_branches": np.array(self.face_branches)}
        if self.images is not None:
            arrays["images"] = self.images
        if self.sets is not None:
            arrays["sets"] = np.asarray(self.sets, dtype=str)
        for b in self.probs:
            arrays[f"probs::{b}"] = self.probs[b]
            arrays[f"spoke::{b}"] = self.spoke[b]
        with atomic_write(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Evidence:
        with np.load(path, allow_pickle=False) as z:
            counts = z["counts"]
            splits = np.cumsum(counts)[:-1]
            emb = np.split(z["embeddings"], splits) if len(z["embeddings"]) else [np.zeros((0, 0)) for _ in counts]
            fracs = np.split(z["fracs"], splits)
            probs = {k.split("::", 1)[1]: z[k] for k in z.files if k.startswith("probs::")}
            spoke = {k.split("::", 1)[1]: z[k].astype(bool) for k in z.files if k.startswith("spoke::")}
            return cls([str(n) for n in z["names"]], z["labels"].astype(np.int64), probs, spoke,
                       tuple(str(b) for b in z["face_branches"]), list(emb), list(fracs),
                       z["images"] if "images" in z.files else None, z["sets"] if "sets" in z.files else None)


def collect_evidence(recognizer: GroupEmotionRecognizer, items: Sequence[tuple[Path, int, str]], trunk: str,
                     batch_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True,
                     log: Callable[[str], None] | None = None, scene_trunk: str | None = None) -> Evidence:
    """Run the recognizer over labelled (path, class, name) photos once; keep what :func:`select_and_fit` needs.

    ``trunk`` names the face branch whose embeddings (flip-averaged) a group head will read;
    ``scene_trunk`` a whole-image branch whose trunk features (its own crop and flip) a scene head will read.
    Branch probabilities are the pooled, uncalibrated ones. Unreadable photos are skipped (logged).
    """
    recognizer.active_branches(all_branches=True)  # every branch loaded
    if trunk not in recognizer.branches or not recognizer.branches[trunk].is_face:
        raise DatasetError(f"trunk {trunk!r} is not a face branch of the recognizer ({', '.join(recognizer.branches)})")
    if scene_trunk is not None and (scene_trunk not in recognizer.branches
                                    or recognizer.branches[scene_trunk].is_face):
        raise DatasetError(f"scene trunk {scene_trunk!r} is not a whole-image branch of the recognizer "
                           f"({', '.join(recognizer.branches)})")
    scene = recognizer.branches[scene_trunk] if scene_trunk is not None else None
    images: list[np.ndarray] = []
    label_of = {p: (y, n) for p, y, n in items}
    names, ys, emb, fracs = [], [], [], []
    probs: dict[str, list[np.ndarray]] = {b: [] for b in recognizer.branches}
    spoke: dict[str, list[bool]] = {b: [] for b in recognizer.branches}
    trunk_branch = recognizer.branches[trunk]
    bar = tqdm(total=len(items), unit="photo", disable=not progress, file=sys.stderr, desc="evidence")
    for good, bad in load_batches([p for p, _, _ in items], batch_size, max_pixels):
        for err in bad:
            if log:
                log(f"skipped {err}")
        results = recognizer.predict([img for _, img in good], all_branches=True) if good else []
        for (path, img), res in zip(good, results):
            y, name = label_of[path]
            names.append(name)
            ys.append(y)
            for b, r in res.branches.items():
                probs[b].append(r.before_calibration)
                spoke[b].append(r.spoke)
            emb.append(trunk_branch.embed(trunk_branch.crops(img, res.faces)) if res.faces
                       else np.zeros((0, trunk_branch.num_features)))
            if scene is not None:
                images.append(scene.features(scene.crops(img, []))[0])
            fracs.append(np.array([f.area for f in res.faces]) / float(res.width * res.height))
        bar.update(len(good) + len(bad))
    bar.close()
    if not names:
        raise DatasetError("no photo could be read; see the errors above")
    face_branches = tuple(b for b, br in recognizer.branches.items() if br.is_face)
    return Evidence(names, np.asarray(ys, dtype=np.int64), {b: np.stack(v) for b, v in probs.items()},
                    {b: np.asarray(v, dtype=bool) for b, v in spoke.items()}, face_branches, emb, fracs,
                    np.stack(images).astype(np.float32) if scene is not None else None)


