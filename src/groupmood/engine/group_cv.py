"""Honest selection on a small group validation set: everything fitted is chosen by k-fold CV.

What is fitted on labelled group photos (a group-face head on a frozen face trunk, each branch's
temperature, the fusion weights or a fusion model) is chosen and fitted by :func:`select_and_fit`
using only the photos it is given and their committed folds (:mod:`groupmood.data.folds`):

1. the head's regularisation ``c`` is the one of best out-of-fold (balanced) accuracy over the
   folds; the head is then fitted on every photo, and its out-of-fold probabilities stand for it
   in the next steps (stacking: later steps never see the head score the photos it was fitted on);
2. each branch gets a temperature, with or without a per-class bias, fitted on those probabilities;
3. fusion: each branch alone, the paper's weighted average (weights searched on a grid over the
   simplex, by class-balanced log loss: :attr:`StackOptions.weight_objective`) and a fusion model
   (:class:`groupmood.fusion.model.FusionModel`, ``c`` from a small grid), each with either
   calibration, are scored by cross-validation over the same folds, and the best is fitted on every
   photo (ties go to the simpler: no bias, a single branch, then the weighted average). Scores are
   balanced accuracy (:class:`StackOptions`). The whole-image branches are the fusion's fallback
   (:func:`groupmood.fusion.fuse`): they label a photo without faces even when the weights, fitted
   on group photos that all have faces, gave them 0.

:func:`cross_validate` wraps that in an outer loop: for each fold, :func:`select_and_fit` runs on
the other folds alone (their own folds as the inner split) and the result labels the held-out
fold. The accuracy of those held-out labels is the figure to report: no choice saw the photos it
is scored on. :class:`~groupmood.engine.evidence.Evidence` holds what the photos give once (each
branch's pooled probabilities, the faces' trunk embeddings, face sizes), so the whole procedure costs
seconds. :mod:`groupmood.engine.bundle_writer` writes a fitted :class:`Stack` as a bundle;
:mod:`groupmood.engine.bundle_fit` is the whole fit from labelled photos (``groupmood fit-bundle``).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..fusion import fuse_rows, search_weights
from ..fusion.calibration import (Calibration, calibrate_rows, expected_calibration_error, fit_calibration,
                                  negative_log_likelihood)
from ..fusion.linear import class_balanced_weights
from ..fusion.model import FusionModel, fusion_features
from ..labels import GROUP_CLASSES
from ..metrics import accuracy_table
from .evidence import Evidence, collect_evidence
from .group_head import LinearHead, fit_group_head, fit_softmax_regression

__all__ = ["GROUP_BRANCH", "SCENE_BRANCH", "Evidence", "Stack", "StackOptions", "apply_stack", "collect_evidence",
           "cross_validate", "select_and_fit"]

#: The name of the group-face head's branch in the bundle and in the tables.
GROUP_BRANCH = "group"
#: The name of the scene head's branch: a group-class head on a whole-image trunk, fitted on the group photos.
SCENE_BRANCH = "scene"


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
