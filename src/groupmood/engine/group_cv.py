"""Honest selection on a small group validation set: everything fitted is chosen by k-fold CV.

What is fitted on labelled group photos (a group-face head on a frozen face trunk, each branch's
temperature, the fusion weights or a fusion model) is chosen and fitted by :func:`select_and_fit`
using only the photos it is given and their committed folds (:mod:`groupmood.data.folds`):

1. the head's regularisation ``c`` is the one of best out-of-fold (balanced) accuracy over the
   folds; the head is then fitted on every photo, and its out-of-fold probabilities stand for it
   in the next steps (stacking: later steps never see the head score the photos it was fitted on);
2. each branch gets a temperature, with or without a per-class bias, fitted on those probabilities;
3. fusion: each branch alone, the paper's weighted average (weights searched on a grid over the
   simplex, by class-balanced log loss: :attr:`StackOptions.weight_objective`) and a fusion model (:class:`groupmood.fusion_model.FusionModel`, ``c`` from a small
   grid), each with either calibration, are scored by cross-validation over the same folds, and
   the best is fitted on every photo (ties go to the simpler: no bias, a single branch, then the
   weighted average). Scores are balanced accuracy (:class:`StackOptions`). The whole-image
   branches are the fusion's fallback (:func:`groupmood.fusion.fuse`): they label a photo without
   faces even when the weights, fitted on group photos that all have faces, gave them 0.

:func:`cross_validate` wraps that in an outer loop: for each fold, :func:`select_and_fit` runs on
the other folds alone (their own folds as the inner split) and the result labels the held-out
fold. The accuracy of those held-out labels is the figure to report: no choice saw the photos it
is scored on. :class:`Evidence` holds what the photos give once (each branch's pooled
probabilities, the faces' trunk embeddings, face sizes), so the whole procedure costs seconds.

Scene head: where the evidence holds whole-image trunk features (``Evidence.images``, e.g. the
global branch's ImageNet trunk), a group-class head on them (:data:`SCENE_BRANCH`, class-balanced
logistic regression, ``c`` from :attr:`StackOptions.scene_cs`) is chosen and fitted like the group
head, its out-of-fold probabilities standing for it in calibration and fusion. Evidence of several
data sets is joined with :meth:`Evidence.concat`; ``Evidence.sets`` keeps each photo's set.

Extra head data: an ``extra`` Evidence (other labelled photos, e.g. image-sentiment photos with
several faces) can be given to :func:`select_and_fit` and :func:`cross_validate`. It joins the
training side of every group-head fit (each inner fold's, the final fit on the photos given, so
each outer fold's too), weighted by ``extra_weight`` per photo relative to an average group photo
(:func:`groupmood.engine.group_head.fit_group_head`), and nothing else: it is never scored, never
enters calibration or fusion. ``extra_weight`` is chosen with ``c`` in step 1 (grid
:attr:`StackOptions.extra_weights`; ties go to the smaller weight, then the smaller ``c``);
``extra_weights=(0.0,)``, the default, is the procedure without extra data, bit for bit.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ..calibration import (Calibration, calibrate_rows, expected_calibration_error, fit_calibration,
                           negative_log_likelihood)
from ..errors import DatasetError
from ..fusion import fuse_rows, search_weights
from ..fusion_model import FusionModel, fusion_features
from ..images import DEFAULT_MAX_PIXELS, load_batches
from ..labels import GROUP_CLASSES
from ..linear import class_balanced_weights
from .group_head import LinearHead, fit_group_head, fit_softmax_regression
from ..metrics import accuracy_table

if TYPE_CHECKING:
    from ..pipeline import GroupEmotionRecognizer

__all__ = ["GROUP_BRANCH", "SCENE_BRANCH", "Evidence", "Stack", "StackOptions", "apply_stack", "collect_evidence",
           "cross_validate", "select_and_fit"]

#: The name of the group-face head's branch in the bundle and in the tables.
GROUP_BRANCH = "group"
#: The name of the scene head's branch: a group-class head on a whole-image trunk, fitted on the group photos.
SCENE_BRANCH = "scene"


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
        results = recognizer.predict([img for _, img in good], raw=True, all_branches=True) if good else []
        for (path, img), res in zip(good, results):
            y, name = label_of[path]
            names.append(name)
            ys.append(y)
            for b, r in res.branches.items():
                probs[b].append(r.probs)
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


# --------------------------------------------------------------------------- selection

@dataclass(frozen=True)
class StackOptions:
    """The grids :func:`select_and_fit` chooses from, and how it scores them.

    ``balanced`` scores every choice by balanced accuracy (the mean of the per-class accuracies),
    so the choices do not trade a small class (multiemova-dev's Negative) for a large one.
    ``weight_objective`` is what the weighted average's grid search optimises on the photos it is
    fitted on (:func:`groupmood.fusion.search_weights`): ``log_loss`` (class-balanced when
    ``balanced``), smooth where accuracy on a hundred photos is a step function with many ties, or
    the authors' ``accuracy``. ``scene_cs``: the scene head's grid, used where the evidence has
    whole-image features. ``per_set``: with evidence of several data sets (:attr:`Evidence.sets`), a
    choice scores the mean of each set's figure, so a small set counts as much as a large one.
    """

    head_cs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    scene_cs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    extra_weights: tuple[float, ...] = (0.0,)
    fusion_cs: tuple[float, ...] = (0.01, 0.1, 1.0)
    step: float = 0.1
    bias: tuple[bool, ...] = (False, True)
    fusion_kinds: tuple[str, ...] = ("single", "weighted", "model")
    head: bool = True
    balanced: bool = True
    weight_objective: str = "log_loss"
    per_set: bool = False


@dataclass
class Stack:
    """What :func:`select_and_fit` chose and fitted."""

    head: LinearHead | None
    head_c: float | None
    calibration: dict[str, Calibration]
    fusion: str
    weights: dict[str, float]
    model: FusionModel | None
    scores: dict[str, Any] = field(default_factory=dict)
    head_extra_weight: float | None = None
    fallback: tuple[str, ...] = ()
    scene_head: LinearHead | None = None
    scene_c: float | None = None


def _accuracy(pred: np.ndarray, y: np.ndarray, balanced: bool = False, sets: np.ndarray | None = None) -> float:
    """Accuracy, or the mean of the per-class accuracies (``balanced``); with ``sets`` (a data set name per
    photo) the mean over the sets of each set's figure, so that a small set counts as much as a large one."""
    if not len(y):
        return 0.0
    if sets is not None and len(np.unique(sets)) > 1:
        return float(np.mean([_accuracy(pred[sets == s], y[sets == s], balanced) for s in np.unique(sets)]))
    if balanced:
        return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))
    return float((pred == y).mean())


def _sets(ev: Evidence, opts: StackOptions) -> np.ndarray | None:
    """The data set of each photo where choices weigh the sets alike (``opts.per_set``), else None."""
    return ev.sets if opts.per_set else None


def _fit_head(ev: Evidence, idx: np.ndarray | None, c: float, extra: Evidence | None,
              extra_weight: float) -> LinearHead:
    """The group head on the photos ``idx`` of ``ev`` (all when None), plus ``extra`` on the training side."""
    faces = ev.embeddings if idx is None else [ev.embeddings[i] for i in idx]
    labels = ev.labels if idx is None else ev.labels[idx]
    if extra is None or extra_weight == 0:
        return fit_group_head(faces, labels, c)
    return fit_group_head(faces, labels, c, extra_faces=extra.embeddings, extra_labels=extra.labels,
                          extra_weight=extra_weight)


def _head_oof(ev: Evidence, folds: np.ndarray, c: float, extra: Evidence | None = None,
              extra_weight: float = 0.0) -> np.ndarray:
    """Out-of-fold group-head probabilities (NaN rows: no face); ``extra`` only ever trains."""
    out = np.full((len(ev), len(GROUP_CLASSES)), np.nan)
    for f in np.unique(folds):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        head = _fit_head(ev, tr, c, extra, extra_weight)
        out[te] = head.photo_probs([ev.embeddings[i] for i in te])
    return out


def _fit_scene(ev: Evidence, idx: np.ndarray | None, c: float) -> LinearHead:
    """The scene head on the whole-image features of the photos ``idx`` (all when None), classes balanced."""
    x = ev.images if idx is None else ev.images[idx]
    y = ev.labels if idx is None else ev.labels[idx]
    return fit_softmax_regression(x, y, c, len(GROUP_CLASSES), class_balanced_weights(y, len(GROUP_CLASSES))[y])


def _scene_oof(ev: Evidence, folds: np.ndarray, c: float) -> np.ndarray:
    """Out-of-fold scene-head probabilities."""
    out = np.zeros((len(ev), len(GROUP_CLASSES)))
    for f in np.unique(folds):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        out[te] = _fit_scene(ev, tr, c).probs(ev.images[te])
    return out


def _branch_table(ev: Evidence, group: np.ndarray | None,
                  scene: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    probs = dict(ev.probs)
    spoke = dict(ev.spoke)
    if group is not None:
        ok = ~np.isnan(group[:, 0])
        probs[GROUP_BRANCH] = np.where(ok[:, None], group, 1.0 / len(GROUP_CLASSES))
        spoke[GROUP_BRANCH] = ok
    if scene is not None:
        probs[SCENE_BRANCH] = scene
        spoke[SCENE_BRANCH] = np.ones(len(scene), dtype=bool)
    return probs, spoke


def _weighted_predict(probs: Mapping[str, np.ndarray], spoke: Mapping[str, np.ndarray],
                      weights: Mapping[str, float], fallback: Sequence[str] = ()) -> np.ndarray:
    return fuse_rows(dict(probs), dict(weights), dict(spoke), fallback)[1]


def _fallback(ev: Evidence, branches: Sequence[str]) -> tuple[str, ...]:
    """The whole-image branches: they label a photo without faces whatever weight the fit gave them."""
    return tuple(b for b in branches if b not in ev.face_branches and b != GROUP_BRANCH)


def _features(ev: Evidence, probs: Mapping[str, np.ndarray], spoke: Mapping[str, np.ndarray],
              branches: Sequence[str], face_branches: Sequence[str]) -> np.ndarray:
    return np.stack([fusion_features({b: probs[b][i] for b in branches}, {b: bool(spoke[b][i]) for b in branches},
                                     face_branches, len(ev.embeddings[i]), ev.face_fracs[i], branches)
                     for i in range(len(ev))])


def _fit_weighted(probs: Mapping[str, np.ndarray], spoke: Mapping[str, np.ndarray], y: np.ndarray,
                  opts: StackOptions) -> dict[str, float]:
    return search_weights(dict(probs), y, step=opts.step, spoke=dict(spoke), balanced=opts.balanced,
                          objective=opts.weight_objective).best_weights


def _fusion_cv(ev: Evidence, cprobs: Mapping[str, np.ndarray], spoke: Mapping[str, np.ndarray], folds: np.ndarray,
               opts: StackOptions) -> dict[str, float]:
    """CV accuracy over ``folds`` of each fusion candidate on calibrated branch probabilities."""
    y = ev.labels
    branches = list(cprobs)
    face_branches = [b for b in branches if b in ev.face_branches or b == GROUP_BRANCH]
    fallback = _fallback(ev, branches)
    cv: dict[str, float] = {}
    if "single" in opts.fusion_kinds:
        for b in branches:
            cv[f"single {b}"] = _accuracy(_weighted_predict(cprobs, spoke, {o: float(o == b) for o in branches},
                                                            fallback), y, opts.balanced, _sets(ev, opts))
    pred_w = np.empty(len(y), dtype=np.int64)
    feats = _features(ev, cprobs, spoke, branches, face_branches) if "model" in opts.fusion_kinds else None
    pred_m = {c: np.empty(len(y), dtype=np.int64) for c in opts.fusion_cs}
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        if "weighted" in opts.fusion_kinds:
            w = _fit_weighted({b: p[tr] for b, p in cprobs.items()}, {b: s[tr] for b, s in spoke.items()}, y[tr],
                              opts)
            pred_w[te] = _weighted_predict({b: p[te] for b, p in cprobs.items()},
                                           {b: s[te] for b, s in spoke.items()}, w, fallback)
        if feats is not None:
            for c in opts.fusion_cs:
                m = FusionModel.fit(feats[tr], y[tr], branches, face_branches, c)
                pred_m[c][te] = m.predict_proba(feats[te]).argmax(axis=1)
    if "weighted" in opts.fusion_kinds:
        cv["weighted"] = _accuracy(pred_w, y, opts.balanced, _sets(ev, opts))
    if feats is not None:
        for c in opts.fusion_cs:
            cv[f"model c={c}"] = _accuracy(pred_m[c], y, opts.balanced, _sets(ev, opts))
    return cv


def select_and_fit(ev: Evidence, folds: np.ndarray, opts: StackOptions = StackOptions(),
                   extra: Evidence | None = None) -> Stack:
    """Choose by CV over ``folds`` and fit on every photo of ``ev`` (see the module docstring).

    ``extra``: photos that only ever join the group head's training side (never scored, never in
    calibration or fusion), weighted by the ``extra_weight`` chosen from ``opts.extra_weights``.
    """
    y = ev.labels
    if not opts.bias or not opts.fusion_kinds:
        raise ValueError("StackOptions needs at least one calibration mode (bias) and one fusion kind")
    if not opts.extra_weights or min(opts.extra_weights) < 0:
        raise ValueError(f"StackOptions.extra_weights needs weights >= 0, got {opts.extra_weights}")
    extra_weights = opts.extra_weights if extra is not None and len(extra) else (0.0,)
    scores: dict[str, Any] = {}
    head, head_c, head_ew, group = None, None, None, None
    if opts.head:
        by_c = {}
        oof = {}
        for ew in extra_weights:
            for c in opts.head_cs:
                oof[ew, c] = _head_oof(ev, folds, c, extra, ew)
                ok = ~np.isnan(oof[ew, c][:, 0])
                by_c[ew, c] = _accuracy(np.nanargmax(np.where(ok[:, None], oof[ew, c], 0), axis=1)[ok], y[ok],
                                        opts.balanced, None if _sets(ev, opts) is None else ev.sets[ok])
        head_ew, head_c = max(by_c, key=lambda k: (by_c[k], -k[0], -k[1]))
        if extra_weights == (0.0,):
            scores["head_cv"] = {str(c): round(by_c[0.0, c], 4) for c in opts.head_cs}
        else:
            scores["head_cv"] = {f"extra_weight={ew} c={c}": round(a, 4) for (ew, c), a in by_c.items()}
            scores["head_extra_weight"] = head_ew
        group = oof[head_ew, head_c]
        head = _fit_head(ev, None, head_c, extra, head_ew)
    scene_head, scene_c, scene = None, None, None
    if ev.images is not None and opts.scene_cs:
        scene_oof = {c: _scene_oof(ev, folds, c) for c in opts.scene_cs}
        by_c = {c: _accuracy(p.argmax(1), y, opts.balanced, _sets(ev, opts)) for c, p in scene_oof.items()}
        scene_c = max(by_c, key=lambda c: (by_c[c], -c))
        scores["scene_cv"] = {str(c): round(a, 4) for c, a in by_c.items()}
        scene = scene_oof[scene_c]
        scene_head = _fit_scene(ev, None, scene_c)
    probs, spoke = _branch_table(ev, group, scene)
    best: tuple[float, int, str, bool] = (-1.0, -99, "", False)
    fitted = {}
    for bias in opts.bias:
        cal = {b: fit_calibration(p[spoke[b]], y[spoke[b]], bias=bias) if spoke[b].sum() >= 2 else Calibration()
               for b, p in probs.items()}
        cprobs = calibrate_rows(probs, spoke, cal)
        cv = _fusion_cv(ev, cprobs, spoke, folds, opts)
        fitted[bias] = (cal, cprobs)
        scores[f"fusion_cv{' (bias)' if bias else ''}"] = {k: round(v, 4) for k, v in cv.items()}
        rank = {"single": 2, "weighted": 1, "model": 0}
        for k, v in cv.items():
            key = (v, rank[k.split()[0]] - (3 if bias else 0), k, bias)
            if key[:2] > best[:2]:
                best = key
    _, _, choice, bias = best
    cal, cprobs = fitted[bias]
    scores["fusion_choice"] = choice + (" with per-class bias" if bias else "")
    branches = list(cprobs)
    if choice.startswith("single "):
        weights = {b: float(b == choice.split(" ", 1)[1]) for b in branches}
    else:
        weights = _fit_weighted(cprobs, spoke, y, opts)
    model = None
    if choice.startswith("model"):
        face_branches = [b for b in branches if b in ev.face_branches or b == GROUP_BRANCH]
        model = FusionModel.fit(_features(ev, cprobs, spoke, branches, face_branches), y, branches, face_branches,
                                float(choice.split("=", 1)[1]))
    return Stack(head, head_c, cal, scores["fusion_choice"], weights, model, scores, head_ew,
                 _fallback(ev, branches), scene_head, scene_c)


def apply_stack(stack: Stack, ev: Evidence) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Calibrated branch probabilities, spoke flags and fused probabilities of new photos."""
    group = stack.head.photo_probs(ev.embeddings) if stack.head is not None else None
    scene = stack.scene_head.probs(ev.images) if stack.scene_head is not None else None
    probs, spoke = _branch_table(ev, group, scene)
    cprobs = calibrate_rows(probs, spoke, stack.calibration)
    if stack.model is not None:
        feats = _features(ev, cprobs, spoke, stack.model.branches, stack.model.face_branches)
        fused = stack.model.predict_proba(feats)
    else:
        fused = fuse_rows(cprobs, stack.weights, spoke, stack.fallback)[0]
    return probs, spoke, fused


def cross_validate(ev: Evidence, folds: np.ndarray, opts: StackOptions = StackOptions(),
                   progress: bool = True, extra: Evidence | None = None) -> dict[str, Any]:
    """Outer k-fold CV of :func:`select_and_fit`: held-out accuracy per branch and fused, calibration stats.

    ``extra`` joins the group head's training side in every outer fold (and its inner folds); only
    photos of ``ev`` are ever scored.
    """
    y = ev.labels
    n = len(y)
    raw: dict[str, np.ndarray] = {}
    cal: dict[str, np.ndarray] = {}
    spoke_all: dict[str, np.ndarray] = {}
    fused = np.zeros((n, len(GROUP_CLASSES)))
    chosen = []
    for f in tqdm(np.unique(folds), disable=not progress, file=sys.stderr, desc="outer folds"):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        stack = select_and_fit(ev.subset(tr), folds[tr], opts, extra)
        probs, spoke, fz = apply_stack(stack, ev.subset(te))
        cprobs = calibrate_rows(probs, spoke, stack.calibration)
        for b in probs:
            raw.setdefault(b, np.zeros((n, len(GROUP_CLASSES))))[te] = probs[b]
            cal.setdefault(b, np.zeros((n, len(GROUP_CLASSES))))[te] = cprobs[b]
            spoke_all.setdefault(b, np.zeros(n, dtype=bool))[te] = spoke[b]
        fused[te] = fz
        chosen.append({"fold": int(f), "head_c": stack.head_c, "head_extra_weight": stack.head_extra_weight,
                       "scene_c": stack.scene_c,
                       "fusion": stack.fusion,
                       "weights": {b: round(w, 3) for b, w in stack.weights.items()},
                       "temperature": {b: round(c.temperature, 3) for b, c in stack.calibration.items()},
                       **stack.scores})
    tables = {b: accuracy_table(np.where(spoke_all[b], raw[b].argmax(1), -1), y) for b in raw}
    tables["fused"] = accuracy_table(fused.argmax(1), y)
    calib = {}
    for b in raw:
        s = spoke_all[b]
        calib[b] = {"photos": int(s.sum()),
                    "nll_before": round(negative_log_likelihood(raw[b][s], y[s]), 4),
                    "nll_after": round(negative_log_likelihood(cal[b][s], y[s]), 4),
                    "ece_before": round(expected_calibration_error(raw[b][s], y[s]), 4),
                    "ece_after": round(expected_calibration_error(cal[b][s], y[s]), 4)}
    calib["fused"] = {"photos": n, "nll": round(negative_log_likelihood(fused, y), 4),
                      "ece": round(expected_calibration_error(fused, y), 4)}
    return {"n": n, "k": int(len(np.unique(folds))), "tables": tables, "calibration": calib, "folds": chosen,
            "oof_fused": fused.tolist(), "oof_raw": {b: p.tolist() for b, p in raw.items()},
            "oof_spoke": {b: s.tolist() for b, s in spoke_all.items()}}


# --------------------------------------------------------------------------- shipping

def _same_tensors(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold the same tensors and classes (their other metadata aside).

    fp16 tensors count as the same within one fp16 step of each value: a head refitted on evidence
    collected again (float32 noise of the order of 1e-7) rounds to the same fp16 numbers or a
    neighbour, and such a refit should keep the shipped file and its sha256.
    """
    from safetensors import safe_open
    from safetensors.numpy import load_file

    def close(x: np.ndarray, y: np.ndarray) -> bool:
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.dtype != np.float16:
            return bool(np.array_equal(x, y))
        step = np.spacing(np.maximum(np.abs(x), np.abs(y))).astype(np.float32)
        return bool((np.abs(x.astype(np.float32) - y.astype(np.float32)) <= step).all())

    ta, tb = load_file(str(a)), load_file(str(b))
    with safe_open(str(a), "np") as fa, safe_open(str(b), "np") as fb:
        same_classes = (fa.metadata() or {}).get("classes") == (fb.metadata() or {}).get("classes")
    return same_classes and ta.keys() == tb.keys() and all(close(ta[k], tb[k]) for k in ta)


def export_group_model(stack: Stack, trunk_model: str | Path, out: str | Path) -> Path:
    """The trunk's net with the fitted group head in place of its expression head, as fp16 safetensors.

    An existing ``out`` with the same tensors and classes is kept byte for byte (its sha256 stays),
    so fitting again on the same photos reproduces a shipped bundle exactly.
    """
    if stack.head is None:
        raise DatasetError("this stack has no group head to export (fitted with head=False)")
    return export_head_model(stack.head, trunk_model, out)


def export_scene_model(stack: Stack, trunk_model: str | Path, out: str | Path) -> Path:
    """The whole-image net with the fitted scene head in place of its own head, as fp16 safetensors."""
    if stack.scene_head is None:
        raise DatasetError("this stack has no scene head to export (its evidence had no whole-image features)")
    return export_head_model(stack.scene_head, trunk_model, out)


def export_head_model(head: LinearHead, trunk_model: str | Path, out: str | Path) -> Path:
    """A net (file ``trunk_model``) with ``head`` as its group-class head, as fp16 safetensors; an existing
    ``out`` with the same tensors and classes is kept byte for byte."""
    import os
    import tempfile

    import torch

    from ..checkpoint import load_model, save_model

    largest = float(max(np.abs(head.weight).max(), np.abs(head.bias).max()))
    if not largest < float(np.finfo(np.float16).max):
        raise DatasetError(f"the fitted head's weights reach {largest:.3g}, beyond fp16 (the model files' format): "
                           f"the features of {trunk_model} are nearly constant or tiny; check the trunk's weights")
    model, meta = load_model(trunk_model, "cpu")
    model.reset_classifier(len(GROUP_CLASSES), head="softmax")
    with torch.no_grad():
        model.head.fc.weight.copy_(torch.from_numpy(head.weight))
        model.head.fc.bias.copy_(torch.from_numpy(head.bias))
    meta = {**meta, "classes": list(GROUP_CLASSES), "metric": None, "epoch": None}
    out = Path(out)
    if not out.is_file():
        return save_model(model.eval(), meta, out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        new = save_model(model.eval(), meta, Path(tmp) / out.name)
        if not _same_tensors(new, out):
            os.replace(new, out)
    return out


def carried_entries(spec: Mapping[str, Any], folder: Path, fitted: Sequence[str]) -> list[dict[str, Any]]:
    """The base bundle's branches other than the ``fitted`` ones, as entries of a bundle written in ``folder``:
    without calibration, model paths relative to it (or ``store:NAME``)."""
    from ..models.pretrained import STORE_PREFIX

    entries = []
    for b in spec["branches"]:
        if b["name"] in fitted:
            continue
        e = {k: v for k, v in b.items() if k not in ("calibration", "store")}
        model_path = Path(e["model"])
        if "store" in b:
            e["model"] = f"{STORE_PREFIX}{b['store']}"
        else:
            e["model"] = model_path.name if model_path.parent == folder.resolve() else str(model_path)
        entries.append(e)
    return entries


def write_group_bundle(stack: Stack, base: str | Path, out: str | Path, trunk: str, chosen_on: Mapping[str, Any],
                       group_model: str = "face_group.safetensors",
                       fusion_file: str = "fusion.safetensors", scene_trunk: str = "global",
                       scene_model: str = "global_scene.safetensors",
                       detector: Mapping[str, Any] | None = None) -> Path:
    """A bundle YAML beside ``out``: the base bundle's branches (calibrated) plus the group branch (and the scene
    branch, on the whole-image branch ``scene_trunk``, when the stack has one), the fusion.

    The group and scene models (and a fusion model, when chosen) are written next to the YAML; paths in
    it are relative to it, with their sha256. ``detector``: detector settings over the base bundle's.
    """
    import yaml

    from .. import weights as store
    from ..io import atomic_write_text
    from ..pipeline import read_bundle

    spec = read_bundle(base)
    out = Path(out)
    folder = out.parent
    by_name = {b["name"]: b for b in spec["branches"]}
    if trunk not in by_name:
        raise DatasetError(f"the base bundle {base} has no branch {trunk!r} to carry the group head")
    entries = []
    if stack.head is not None:
        path = export_group_model(stack, by_name[trunk]["model"], folder / group_model)
        entries.append({"name": GROUP_BRANCH, "model": group_model, "sha256": store.sha256_file(path),
                        "tta_flip": bool(by_name[trunk].get("tta_flip", True)), "pooling": "all",
                        **({"grey": True} if by_name[trunk].get("grey") else {})})
    if stack.scene_head is not None:
        if scene_trunk not in by_name:
            raise DatasetError(f"the base bundle {base} has no branch {scene_trunk!r} to carry the scene head")
        path = export_scene_model(stack, by_name[scene_trunk]["model"], folder / scene_model)
        flip = by_name[scene_trunk].get("tta_flip")  # the flip its features were read with
        entries.append({"name": SCENE_BRANCH, "model": scene_model, "sha256": store.sha256_file(path),
                        **({} if flip is None else {"tta_flip": bool(flip)})})
    entries += carried_entries(spec, folder, (GROUP_BRANCH, SCENE_BRANCH))
    for e in entries:
        if e["name"] not in stack.calibration:  # a branch the fit left out keeps the base bundle's calibration
            if by_name.get(e["name"], {}).get("calibration"):
                e["calibration"] = by_name[e["name"]]["calibration"]
            continue
        cal = stack.calibration[e["name"]]
        if not cal.is_identity:
            e["calibration"] = cal.to_dict()
    doc: dict[str, Any] = {"format": "groupmood-bundle-1", "branches": entries,
                           "weights": {**{b: round(float(w), 4) for b, w in stack.weights.items()},
                                       **{e["name"]: 0.0 for e in entries if e["name"] not in stack.weights}},
                           "detector": {**spec["detector"], **(detector or {})}}
    if spec["min_faces"] != 1:
        doc["min_faces"] = spec["min_faces"]
    if stack.fallback:
        doc["fallback"] = list(stack.fallback)
    if stack.model is not None:
        fpath = stack.model.save(folder / fusion_file)
        doc["fusion"] = {"kind": "model", "model": fusion_file, "sha256": store.sha256_file(fpath)}
    else:
        doc["fusion"] = {"kind": "weighted"}
    doc["chosen_on"] = dict(chosen_on)
    atomic_write_text(out, yaml.safe_dump(doc, sort_keys=False))
    return out
