"""Two fusions and a gate, chosen by cross-validation over group photos and crowds together.

A photo of a few people and a crowd need different evidence (:mod:`groupmood.fusion.regime`). This
fits both regimes and the gate between them on evidence of several sets (:class:`Evidence`,
``sets`` naming each photo's set):

* the *photo* regime: :func:`select_and_fit` on the photos of the sets of a few people alone (the
  face branches, the group head, the whole-image fallback), the procedure of the default bundle;
* the *crowd* regime: :func:`select_and_fit` on every photo (a group head fitted on both kinds of
  faces, the scene head on the whole-image trunk);
* the gate: class-balanced logistic regression on the whole-image trunk features telling a photo of
  the crowd set from the others, its ``c`` the one of best out-of-fold balanced accuracy. Photos that
  are no crowd and no group photo either (``gate_extra``: e.g. the whole-image branch's own sentiment
  training photos, mostly without faces) can join the gate's "photo" side in every fit, so that
  such a photo keeps the photo regime, whose whole-image fallback was made for it; they are never scored.

The label is ``argmax((1 - p) * photo + p * crowd)``, ``p`` the gate's crowd probability. Both regimes
fuse by weighted averages (the bundle format mixes two of them), and the crowd regime leaves out the
branches the photo regime calibrates (each branch keeps one calibration). :func:`cross_validate_regimes`
is the outer loop whose held-out labels are the figures to report.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import weights as store
from ..errors import DatasetError
from ..fusion.calibration import Calibration
from ..fusion.linear import LinearHead, class_balanced_weights, fit_softmax_regression
from ..fusion.regime import RegimeGate
from ..metrics import accuracy_table
from ..pipeline import Bundle, FusionSpec
from .bundle_writer import (carried_branches, export_group_model, export_head_model, head_branch, save_gate,
                            write_bundle)
from .group_cv import (GROUP_BRANCH, SCENE_BRANCH, Evidence, Stack, StackOptions, _accuracy, apply_stack,
                       select_and_fit)

if TYPE_CHECKING:
    from ..pipeline import Branch

__all__ = ["CROWD_GROUP_BRANCH", "RegimeOptions", "RegimeStack", "apply_regimes", "cross_validate_regimes",
           "image_features", "select_and_fit_regimes", "write_regime_bundle"]

#: The crowd regime's group head's branch name in a bundle (the photo regime's is :data:`GROUP_BRANCH`).
CROWD_GROUP_BRANCH = "group_crowd"


@dataclass(frozen=True)
class RegimeOptions:
    """What each regime may use, and the gate's grid.

    ``crowd_set``: the set name (:attr:`Evidence.sets`) of the crowd photos; ``photo_exclude`` /
    ``crowd_exclude``: branches kept out of each regime's calibration and fusion.
    """

    crowd_set: str = "crowd-dev"
    photo_exclude: tuple[str, ...] = ("aligned",)
    crowd_exclude: tuple[str, ...] = ("aligned", "global", "nonaligned")
    gate_cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    gate_extra_share: float | None = None
    stack: StackOptions = field(default_factory=lambda: StackOptions(fusion_kinds=("single", "weighted")))


@dataclass
class RegimeStack:
    """What :func:`select_and_fit_regimes` chose and fitted."""

    photo: Stack
    crowd: Stack
    gate: LinearHead
    gate_c: float
    scores: dict[str, Any] = field(default_factory=dict)


def _is_crowd(ev: Evidence, opts: RegimeOptions) -> np.ndarray:
    if ev.sets is None or ev.images is None:
        raise DatasetError("regime fitting needs evidence with set names and whole-image features "
                           "(collect it with scene_trunk and join the sets with Evidence.concat)")
    return (np.asarray(ev.sets) == opts.crowd_set).astype(np.int64)


def _fit_gate(x: np.ndarray, target: np.ndarray, c: float, n_extra: int = 0,
              extra_share: float | None = None) -> LinearHead:
    """The gate on ``x`` (the last ``n_extra`` rows extra photos, target 0): the two sides weigh alike; on the photo
    side every photo weighs the same, or with ``extra_share`` the extra photos together weigh that share of it."""
    w = class_balanced_weights(target, 2)[target]
    if n_extra and extra_share is not None:
        n_photo = int((target[:len(target) - n_extra] == 0).sum())
        side = float(w[target == 0].sum())
        w[len(target) - n_extra:] = side * extra_share / n_extra
        w[:len(target) - n_extra][target[:len(target) - n_extra] == 0] = side * (1 - extra_share) / max(n_photo, 1)
    return fit_softmax_regression(x, target, c, 2, w)


def _photo_part(ev: Evidence, opts: RegimeOptions) -> Evidence:
    part = ev.subset(np.flatnonzero(_is_crowd(ev, opts) == 0)).without(
        [b for b in opts.photo_exclude if b in ev.probs])
    return replace(part, images=None, sets=None)


def _crowd_part(ev: Evidence, opts: RegimeOptions) -> Evidence:
    return ev.without([b for b in opts.crowd_exclude if b in ev.probs])


def select_and_fit_regimes(ev: Evidence, folds: np.ndarray, opts: RegimeOptions = RegimeOptions(),
                           gate_extra: np.ndarray | None = None) -> RegimeStack:
    """Choose each part by CV over ``folds`` and fit it on every photo of ``ev`` (see the module docstring).

    ``gate_extra``: (M, D) whole-image trunk features of photos that join the gate's photo side in every fit.
    """
    target = _is_crowd(ev, opts)
    extra = np.zeros((0, ev.images.shape[1]), np.float32) if gate_extra is None else np.asarray(gate_extra)
    if extra.ndim != 2 or extra.shape[1] != ev.images.shape[1]:
        raise DatasetError(f"gate_extra must be (M, {ev.images.shape[1]}) trunk features, got {extra.shape}")
    zeros = np.zeros(len(extra), dtype=np.int64)
    if target.min() == target.max():
        raise DatasetError(f"regime fitting needs photos of the crowd set {opts.crowd_set!r} and of another set")
    photo_idx = np.flatnonzero(target == 0)
    photo = select_and_fit(_photo_part(ev, opts), folds[photo_idx], opts.stack)
    crowd = select_and_fit(_crowd_part(ev, opts), folds, opts.stack)
    by_c = {}
    for c in opts.gate_cs:
        oof = np.zeros(len(ev), dtype=np.int64)
        for f in np.unique(folds):
            tr, te = folds != f, folds == f
            head = _fit_gate(np.concatenate([ev.images[tr], extra]), np.concatenate([target[tr], zeros]), c,
                             len(extra), opts.gate_extra_share)
            oof[te] = head.probs(ev.images[te]).argmax(1)
        by_c[c] = _accuracy(oof, target, balanced=True)
    gate_c = max(by_c, key=lambda c: (by_c[c], -c))
    gate = _fit_gate(np.concatenate([ev.images, extra]), np.concatenate([target, zeros]), gate_c, len(extra),
                     opts.gate_extra_share)
    return RegimeStack(photo, crowd, gate, gate_c,
                       {"gate_cv": {str(c): round(a, 4) for c, a in by_c.items()}, "gate_extra": len(extra)})


def apply_regimes(rs: RegimeStack, ev: Evidence, opts: RegimeOptions = RegimeOptions()) -> tuple[np.ndarray, np.ndarray]:
    """Fused probabilities (N, 3) and the gate's crowd probability (N,) of new photos."""
    photo_ev = replace(ev.without([b for b in opts.photo_exclude if b in ev.probs]), images=None)
    photo = apply_stack(rs.photo, photo_ev)[2]
    crowd = apply_stack(rs.crowd, _crowd_part(ev, opts))[2]
    p = rs.gate.probs(ev.images)[:, 1]
    return (1 - p)[:, None] * photo + p[:, None] * crowd, p


def cross_validate_regimes(ev: Evidence, folds: np.ndarray, opts: RegimeOptions = RegimeOptions(),
                           gate_extra: np.ndarray | None = None) -> dict[str, Any]:
    """Outer k-fold CV of :func:`select_and_fit_regimes`: held-out fused probabilities, gate probabilities and each
    fold's choices, with accuracy tables per set (``gate_extra`` joins every fit's gate, never scored)."""
    fused = np.zeros((len(ev), 3))
    gate = np.zeros(len(ev))
    chosen = []
    for f in np.unique(folds):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        rs = select_and_fit_regimes(ev.subset(tr), folds[tr], opts, gate_extra)
        fused[te], gate[te] = apply_regimes(rs, ev.subset(te), opts)
        chosen.append({"fold": int(f), "gate_c": rs.gate_c, **_choices(rs)})
    pred = fused.argmax(1)
    sets = np.asarray(ev.sets)
    target = _is_crowd(ev, opts)
    tables = {str(s): accuracy_table(pred[sets == s], ev.labels[sets == s]) for s in dict.fromkeys(sets)}
    gate_acc = {str(s): float(((gate[sets == s] > 0.5) == target[sets == s]).mean()) for s in dict.fromkeys(sets)}
    return {"oof_fused": fused, "oof_gate": gate, "tables": tables, "gate_accuracy": gate_acc, "folds": chosen}


def image_features(branch: Branch, paths: Sequence[Path], batch_size: int = 8, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> np.ndarray:
    """(N, D) float32 trunk features of a whole-image ``branch`` (its own crop and flip) for the readable photos
    among ``paths``, in order; unreadable ones are skipped (logged)."""
    from tqdm.auto import tqdm

    from ..images import DEFAULT_MAX_PIXELS, load_batches

    if branch.is_face:
        raise DatasetError("image_features reads a whole-image branch's trunk; this branch is a face branch")
    feats = []
    bar = tqdm(total=len(paths), unit="photo", disable=not progress, file=sys.stderr, desc="image features")
    for good, bad in load_batches(list(paths), batch_size, DEFAULT_MAX_PIXELS):
        for err in bad:
            if log:
                log(f"skipped {err}")
        feats += [branch.features(branch.crops(img, []))[0] for _, img in good]
        bar.update(len(good) + len(bad))
    bar.close()
    return np.stack(feats).astype(np.float32) if feats else np.zeros((0, branch.num_features), np.float32)


def _choices(rs: RegimeStack) -> dict[str, Any]:
    return {"photo": {"head_c": rs.photo.head_c, "fusion": rs.photo.fusion,
                      "weights": {b: round(w, 3) for b, w in rs.photo.weights.items()}},
            "crowd": {"head_c": rs.crowd.head_c, "scene_c": rs.crowd.scene_c, "fusion": rs.crowd.fusion,
                      "weights": {b: round(w, 3) for b, w in rs.crowd.weights.items()}}}


def write_regime_bundle(rs: RegimeStack, base: str | Path, out: str | Path, trunk: str, chosen_on: Mapping[str, Any],
                        scene_trunk: str = "global", gate_file: str = "regime_gate.safetensors",
                        keep_calibration: Sequence[str] = ("global",),
                        detector: Mapping[str, Any] | None = None) -> Path:
    """A regime bundle YAML at ``out`` over the base bundle's branches: the photo regime's group head
    (``face_group.safetensors``), the crowd regime's (``face_group_crowd.safetensors``, branch
    :data:`CROWD_GROUP_BRANCH`) and scene head (``global_scene.safetensors``), the gate file; the photo regime's
    weights and fallback at the top, the crowd regime's under ``fusion.crowd``.

    ``keep_calibration``: branches whose calibration stays the base bundle's (the whole-image fallback,
    calibrated on the photos it labels: photos with fewer faces than the group sets have). ``detector``:
    detector settings over the base bundle's. The YAML is written by
    :func:`groupmood.engine.bundle_writer.write_bundle` (atomically, checked by reading it back).
    """
    spec = Bundle.load(base)
    folder = Path(out).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    by_name = {b.name: b for b in spec.branches}
    for need in (trunk, scene_trunk):
        if need not in by_name:
            raise DatasetError(f"the base bundle {base} has no branch {need!r}")
    if rs.crowd.scene_head is None or rs.photo.head is None or rs.crowd.head is None:
        raise DatasetError("a regime bundle needs both group heads and the crowd regime's scene head")
    if rs.photo.model is not None or rs.crowd.model is not None:
        raise DatasetError("a regime bundle mixes two weighted averages; fit the regimes without fusion models")
    t, s = by_name[trunk], by_name[scene_trunk]
    branches = [head_branch(name, export_group_model(stack, t.model, folder / file), tta_flip=t.tta_flip,
                            pooling="all", grey=t.grey)
                for name, stack, file in ((GROUP_BRANCH, rs.photo, "face_group.safetensors"),
                                          (CROWD_GROUP_BRANCH, rs.crowd, "face_group_crowd.safetensors"))]
    branches.append(head_branch(SCENE_BRANCH, export_head_model(rs.crowd.scene_head, s.model,
                                                                folder / "global_scene.safetensors"),
                                tta_flip=None if s.tta_flip is None else bool(s.tta_flip)))
    branches += carried_branches(spec, (GROUP_BRANCH, CROWD_GROUP_BRANCH, SCENE_BRANCH))
    renamed = {GROUP_BRANCH: CROWD_GROUP_BRANCH}
    fitted = {**{renamed.get(b, b): c for b, c in rs.crowd.calibration.items()}, **rs.photo.calibration}
    calibration = {b.name: (by_name[b.name].calibration if b.name in by_name else Calibration())
                   if b.name in keep_calibration or b.name not in fitted else fitted[b.name] for b in branches}
    gate = RegimeGate(rs.gate, SCENE_BRANCH, {renamed.get(b, b): w for b, w in rs.crowd.weights.items()},
                      tuple(renamed.get(b, b) for b in rs.crowd.fallback), None, {"c": str(rs.gate_c)})
    gate_path = save_gate(gate, folder / gate_file)
    fusion = FusionSpec("regime", gate_path.resolve(), store.sha256_file(gate_path), SCENE_BRANCH,
                        {b: round(float(w), 4) for b, w in gate.weights.items()}, tuple(gate.fallback))
    return write_bundle(out, spec, branches, {b.name: rs.photo.weights.get(b.name, 0.0) for b in branches},
                        calibration, chosen_on, fusion=fusion, fallback=rs.photo.fallback, detector=detector)
