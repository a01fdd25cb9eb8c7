"""A bundle fitted from labelled photos: evidence (cached), committed folds, the nested CV, the fit, the files.

What ``groupmood fit-bundle`` runs, and what ``benchmarks/group_accuracy.py --write-bundle`` and
``benchmarks/crowd_accuracy.py --write-bundle`` / ``--regimes --write-default`` call for the shipped
bundles. Two steps:

1. :func:`load_sets`: the evidence of each labelled set (:class:`PhotoSet`) under a base bundle's models
   (:func:`base_recognizer`: its branches without the fitted ones), collected once into a cache file
   where one is named (:func:`cached_evidence`), with each set's committed folds (:func:`committed_folds`);
   the sets joined into one :class:`FitData`. Unreadable photos are reported and skipped.
2. :func:`fit_bundle`: the nested cross-validation of the procedure (the figures ``chosen_on`` records;
   or one the caller already ran), the fit on every photo, and the bundle written: its YAML (through
   :class:`~groupmood.pipeline.Bundle`, atomically) and its model files beside it.

The kinds (:data:`FIT_KINDS`):

* ``group``: the photo bundle (``bundle_photo.yaml``): a group head on the face trunk, temperatures and
  a fusion (:func:`groupmood.engine.group_cv.select_and_fit`) on group photos;
* ``crowd``: the same on group photos and crowds together, with a scene head on the whole-image trunk
  among the candidates (``bundle_crowd.yaml``);
* ``regime``: a photo regime fitted on the first set, a crowd regime on all, and the gate between them
  (:mod:`groupmood.engine.regime_cv`; the default ``bundle.yaml``). The last set is the crowd set.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DatasetError
from ..pipeline import Bundle
from .bundle_writer import write_group_bundle
from .evidence import Evidence, collect_evidence
from .group_cv import GROUP_BRANCH, SCENE_BRANCH, Stack, StackOptions, cross_validate, select_and_fit
from .regime_cv import (CROWD_GROUP_BRANCH, RegimeOptions, RegimeStack, cross_validate_regimes, image_features,
                        select_and_fit_regimes, write_regime_bundle)

if TYPE_CHECKING:
    from ..pipeline import GroupEmotionRecognizer

__all__ = ["DEFAULT_EXCLUDE", "FIT_KINDS", "FITTED_BRANCHES", "BundleFit", "FitData", "PhotoSet", "base_recognizer",
           "cache_name", "cached_evidence", "committed_folds", "evidence_key", "fit_bundle", "gate_extra_features",
           "load_sets", "method_text"]

FIT_KINDS = ("group", "crowd", "regime")
#: The branches a fit makes; a base bundle's branches of these names are left out of its evidence.
FITTED_BRANCHES = (GROUP_BRANCH, SCENE_BRANCH, CROWD_GROUP_BRANCH)
#: Each kind's branches kept out of calibration and fusion (weight 0) unless told otherwise: the aligned branch
#: (no gain in the nested CV, and the costliest crops), and for crowds the sentiment-trained whole-image branch,
#: whose trunk the scene head reads (benchmarks/group_accuracy.py EXCLUDED, crowd_accuracy.py CROWD_EXCLUDED).
#: ``regime``: the photo regime's exclusions (the crowd regime's are :attr:`RegimeOptions.crowd_exclude`).
DEFAULT_EXCLUDE: dict[str, tuple[str, ...]] = {"group": ("aligned",), "crowd": ("aligned", "global"),
                                               "regime": ("aligned",)}
#: The model files each kind writes beside the YAML (besides a fusion model or gate).
_GROUP_FILES = {"group": {}, "crowd": {"group_model": "face_group_crowd.safetensors",
                                       "fusion_file": "fusion_crowd.safetensors"}}


@dataclass(frozen=True)
class PhotoSet:
    """A labelled set: its name, its (path, class index, name) photos, its committed fold file, and the file its
    evidence is cached in (None: collected every time)."""

    name: str
    items: Sequence[tuple[Path, int, str]]
    folds: Path
    cache: Path | None = None


@dataclass
class FitData:
    """The sets' evidence joined (``evidence.sets`` naming each photo's set), the fold of each photo, each photo's
    file, and the set names in order."""

    evidence: Evidence
    folds: np.ndarray
    photos: list[Path]
    set_names: list[str]


@dataclass
class BundleFit:
    """What :func:`fit_bundle` chose, fitted and wrote."""

    kind: str
    stack: Stack | RegimeStack
    cv: Mapping[str, Any] | None
    chosen_on: dict[str, Any]
    path: Path | None = None
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- evidence

def evidence_key(bundle: str | Path) -> str:
    """A short hash of what the evidence depends on: the bundle's base branches (model, flip, pooling, crop) and
    detector, so that a cache collected with other branches is never reused."""
    spec = Bundle.load(bundle)
    branches = [{"name": b.name, "sha256": b.sha256, "tta_flip": b.tta_flip, "pooling": b.pooling,
                 "margin": b.margin or None, "grey": b.grey}  # None: not set in the YAML (the key's old spelling)
                for b in spec.branches if b.name not in FITTED_BRANCHES]
    blob = json.dumps({"branches": branches, "detector": spec.detector_overrides()}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def base_recognizer(bundle: str | Path, device: str = "cpu", min_face_frac: float | None = None,
                    ) -> GroupEmotionRecognizer:
    """The bundle's models without the fitted parts: no group, crowd group or scene branch, no calibration, no
    fusion; its detector (``min_face_frac`` over the bundle's setting)."""
    from ..detect import FaceDetector
    from ..pipeline import Branch, GroupEmotionRecognizer

    spec = Bundle.load(bundle)
    branches = {b.name: Branch.from_file(b.model, device, b.tta_flip, b.pooling, b.margin, b.sha256, bool(b.grey))
                for b in spec.branches if b.name not in FITTED_BRANCHES}
    if not branches:
        raise ConfigError(f"the base bundle {bundle} has no branch besides fitted ones ({', '.join(FITTED_BRANCHES)})")
    settings = {**spec.detector_overrides(), **({} if min_face_frac is None else {"min_face_frac": min_face_frac})}
    detector = FaceDetector.from_pretrained(device=device, auto_fetch=True, **settings)
    return GroupEmotionRecognizer(detector, branches, {n: 1.0 for n in branches}, min_faces=spec.min_faces)


def cached_evidence(bundle: str | Path, items: Sequence[tuple[Path, int, str]] | Callable[[], Sequence],
                    cache: Path | None, trunk: str, scene_trunk: str | None = None,
                    min_face_frac: float | None = None, device: str = "cpu", batch_size: int = 8,
                    progress: bool = True, log: Callable[[str], None] | None = None) -> Evidence:
    """The evidence of labelled photos under the bundle's base branches (:func:`base_recognizer`): read from
    ``cache`` where it exists, else collected (unreadable photos logged and skipped) and saved there.

    ``items`` may be a function giving them, called only when collecting. The cache's name should say what it
    depends on (:func:`evidence_key`, the detector setting): its content is not checked against the bundle.
    """
    if cache is not None and cache.is_file():
        return Evidence.load(cache)
    rec = base_recognizer(bundle, device, min_face_frac)
    ev = collect_evidence(rec, items() if callable(items) else items, trunk, batch_size, progress=progress, log=log,
                          scene_trunk=scene_trunk)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        ev.save(cache)
    return ev


def committed_folds(path: Path, names: Sequence[str], labels: np.ndarray, set_name: str,
                    write_missing: bool = False, log: Callable[[str], None] | None = None) -> np.ndarray:
    """The fold of each photo ``names`` from the fold file ``path``; with ``write_missing``, a missing file is first
    written (5 folds stratified by label, seed 0). At least two folds must hold photos."""
    from ..data.folds import fold_indices, stratified_folds, write_folds

    path = Path(path)
    if not path.is_file():
        if not write_missing:
            raise _missing_folds(path, set_name)
        write_folds(path, names, stratified_folds(labels, 5, 0), 5, 0,
                    f"{set_name} labels.csv; stratified by label, seed 0 (groupmood.data.folds.stratified_folds)")
        if log:
            log(f"wrote the folds {path}")
    folds = fold_indices(path, names)[0]
    if len(np.unique(folds)) < 2:
        raise DatasetError(f"the photos of {set_name} all lie in one fold of {path}: cross-validation needs two or "
                           "more; write the folds again")
    return folds


def _missing_folds(path: Path, set_name: str) -> DatasetError:
    return DatasetError(f"fold file {path} does not exist: give the committed folds of {set_name}, or let them be "
                        "written there (fit-bundle --write-folds: 5 folds stratified by label, seed 0)")


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "set"


def cache_name(bundle: str | Path, s: PhotoSet, trunk: str, scene_trunk: str | None,
               min_face_frac: float | None) -> str:
    """A cache file name for a set's evidence that changes with everything it depends on: the base bundle's
    branches and detector, the photos and their labels, the trunks, the detector setting."""
    photos = hashlib.sha256("\n".join(f"{p}\t{y}\t{n}" for p, y, n in s.items).encode()).hexdigest()[:12]
    return (f"evidence_{_safe(s.name)}-{evidence_key(bundle)}-{photos}-{_safe(trunk)}"
            f"{'' if scene_trunk is None else '-' + _safe(scene_trunk)}"
            f"{'' if min_face_frac is None else f'-frac{min_face_frac}'}.npz")


def load_sets(kind: str, bundle: str | Path, sets: Sequence[PhotoSet], trunk: str = "nonaligned",
              scene_trunk: str = "global", exclude: Sequence[str] | None = None, min_face_frac: float | None = None,
              write_missing_folds: bool = False, device: str = "cpu", batch_size: int = 8, progress: bool = True,
              log: Callable[[str], None] | None = None) -> FitData:
    """The evidence of each set for a fit of ``kind`` (with whole-image features for ``crowd`` and ``regime``),
    its folds, the sets joined.

    ``exclude``: branches kept out of calibration and fusion (``group``, ``crowd``: dropped from the evidence;
    ``regime``: see :func:`fit_bundle`); None: the kind's :data:`DEFAULT_EXCLUDE` where the bundle has them.
    """
    _check_kind(kind)
    if not sets:
        raise DatasetError("no labelled photo set to fit on")
    if kind == "regime" and len(sets) < 2:
        raise DatasetError("a regime fit needs two sets: group photos and crowds (the last set)")
    if len({s.name for s in sets}) != len(sets):
        raise DatasetError(f"the sets need different names, got {[s.name for s in sets]}")
    from ..data.folds import fold_indices

    for s in sets:  # a missing, bad or stale fold file fails before any photo is read
        if not s.items:
            raise DatasetError(f"the set {s.name} has no labelled photo")
        if Path(s.folds).is_file():
            fold_indices(s.folds, [n for _, _, n in s.items])
        elif not write_missing_folds:
            raise _missing_folds(Path(s.folds), s.name)
    parts, folds, photos = [], [], []
    for s in sets:
        ev = cached_evidence(bundle, s.items, s.cache, trunk, None if kind == "group" else scene_trunk, min_face_frac,
                             device, batch_size, progress, log)
        path_of = {n: p for p, _, n in s.items}
        stale = [n for n in ev.names if n not in path_of]
        if stale:
            raise DatasetError(f"the evidence cache {s.cache} holds photos that are not in the set {s.name} "
                               f"(e.g. {stale[0]!r}); delete it to collect the evidence again")
        ev.sets = np.full(len(ev), s.name)
        if kind == "group":
            ev.images = None  # no scene head, even from a cache that holds whole-image features
        if kind != "regime":
            ev = ev.without(_exclusions(kind, exclude, ev))
        folds.append(committed_folds(s.folds, ev.names, ev.labels, s.name, write_missing_folds, log))
        photos += [Path(path_of[n]) for n in ev.names]
        parts.append(ev)
    return FitData(Evidence.concat(parts) if len(parts) > 1 else parts[0], np.concatenate(folds), photos,
                   [s.name for s in sets])


def gate_extra_features(bundle: str | Path, paths: Sequence[Path], cache: Path | None = None,
                        scene_trunk: str = "global", device: str = "cpu", progress: bool = True,
                        log: Callable[[str], None] | None = None) -> np.ndarray:
    """(M, D) whole-image trunk features of photos that join the regime gate's photo side (read from ``cache``
    where it exists, else computed and saved there)."""
    if cache is not None and cache.is_file():
        return np.load(cache)
    rec = base_recognizer(bundle, device)
    if scene_trunk not in rec.branches:
        raise ConfigError(f"the base bundle {bundle} has no branch {scene_trunk!r} whose trunk the gate reads")
    feats = image_features(rec.branches[scene_trunk], list(paths), progress=progress, log=log)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, feats)
    return feats


# --------------------------------------------------------------------------- the fit

def _check_kind(kind: str) -> None:
    if kind not in FIT_KINDS:
        raise ConfigError(f"unknown bundle kind {kind!r}; choose one of {', '.join(FIT_KINDS)}")


def _exclusions(kind: str, exclude: Sequence[str] | None, ev: Evidence) -> list[str]:
    if exclude is None:
        return [b for b in DEFAULT_EXCLUDE[kind] if b in ev.probs]
    return list(exclude)


def method_text(kind: str, opts: StackOptions | RegimeOptions, n_gate_extra: int = 0) -> str:
    """How a bundle of ``kind`` is chosen, as its ``chosen_on.method`` says where the caller gives none."""
    if isinstance(opts, RegimeOptions):
        return ("photo regime: group head c, temperatures, fusion (single branch or weighted average) by balanced "
                f"accuracy in {_CV} on the group photos; crowd regime: the same with the scene head on every photo; "
                f"gate: class-balanced logistic regression on the whole-image trunk telling {opts.crowd_set} from "
                f"the group photos ({n_gate_extra} more photos on its photo side in every fit), c by balanced "
                "accuracy in the same folds; all fitted on every photo; label = argmax((1 - p) photo + p crowd)")
    if kind == "crowd":
        return ("group head c, scene head c (logistic regression on the whole-image branch's trunk), temperatures, "
                "fusion among each branch alone, the weighted average and a fusion model; all by balanced accuracy "
                f"in {_CV} over every set together, then fitted on all their photos")
    return ("group head c; temperatures with or without per-class bias; fusion among each branch alone, the "
            f"weighted average (grid step {opts.step:g}, weights by class-balanced {opts.weight_objective}) and a "
            f"fusion model; all by balanced accuracy in {_CV}, then fitted on all photos; the whole-image branch is "
            "the fallback for photos where no weighted branch speaks")


_CV = "k-fold CV over the committed folds"


def _per_class(t: Mapping[str, Any]) -> dict[str, float]:
    return {c: round(v["accuracy"], 4) for c, v in t["per_class"].items()}


def _fused_tables(cv: Mapping[str, Any], data: FitData) -> dict[str, Any]:
    """Each set's accuracy table of the held-out fused labels of :func:`cross_validate`."""
    from ..metrics import accuracy_table

    pred = np.asarray(cv["oof_fused"]).argmax(1)
    sets = np.asarray(data.evidence.sets)
    return {name: accuracy_table(pred[sets == name], data.evidence.labels[sets == name]) for name in data.set_names}


def _record(kind: str, fit: Stack | RegimeStack, cv: Mapping[str, Any] | None, data: FitData,
            extra: Evidence | None) -> dict[str, Any]:
    """The choices and cross-validated figures ``chosen_on`` records for a fit of ``kind``."""
    out: dict[str, Any] = {}
    if cv is not None:
        if kind == "group":
            fused = cv["tables"]["fused"]
            out.update(cv_accuracy=round(fused["accuracy"], 4), cv_per_class=_per_class(fused))
        else:
            tables = cv["tables"] if kind == "regime" else _fused_tables(cv, data)
            out.update(cv_accuracy={n: round(t["accuracy"], 4) for n, t in tables.items()},
                       cv_per_class={n: _per_class(t) for n, t in tables.items()})
    if isinstance(fit, RegimeStack):
        out.update(photo_head_c=fit.photo.head_c, crowd_head_c=fit.crowd.head_c, scene_c=fit.crowd.scene_c,
                   gate_c=fit.gate_c, photo_fusion=fit.photo.fusion, crowd_fusion=fit.crowd.fusion)
    elif kind == "crowd":
        out.update(head_c=fit.head_c, scene_c=fit.scene_c, fusion_choice=fit.scores.get("fusion_choice"))
    else:
        out.update(head_c=fit.head_c, fusion_choice=fit.scores.get("fusion_choice"),
                   **({} if extra is None else {"head_extra_weight": fit.head_extra_weight}),
                   fusion_cv=fit.scores.get("fusion_cv"), fusion_cv_with_bias=fit.scores.get("fusion_cv (bias)"))
    return out


def _write_fit_photos(out: Path, name: str, photos: Sequence[Path], base: Bundle) -> Path:
    """The list of the fitting photos beside the bundle (role ``group``), with the base bundle's other roles (its
    whole-image model's training photos) carried over from its own list."""
    from .group_eval import read_fit_photos, write_fit_photos

    carried: list[tuple[str, str]] = []
    base_list = base.chosen_on.get("fit_photos")
    if isinstance(base_list, str) and Path(base_list).is_file():
        carried = [(d, role) for d, role in read_fit_photos(base_list) if role != "group"]
    return write_fit_photos(out.parent / name, [(p, "group") for p in photos], carried)


def fit_bundle(kind: str, data: FitData, base: str | Path, out: str | Path | None, *,
               trunk: str = "nonaligned", scene_trunk: str = "global",
               opts: StackOptions | RegimeOptions | None = None, exclude: Sequence[str] | None = None,
               extra: Evidence | None = None, gate_extra: np.ndarray | None = None,
               cv: bool | Mapping[str, Any] = True, min_face_frac: float | None = None,
               chosen_on: Mapping[str, Any] | None = None, notes: Mapping[str, Any] | None = None,
               recalibrate: Callable[[Stack], Mapping[str, Any]] | None = None, fit_photos: str | None = None,
               progress: bool = True, log: Callable[[str], None] | None = None) -> BundleFit:
    """Choose by nested CV, fit on every photo of ``data`` and write the bundle YAML ``out`` (None: write nothing).

    ``opts``: the grids (:class:`StackOptions` for ``group`` and ``crowd``, :class:`RegimeOptions` for ``regime``;
    None: the defaults, the regime's crowd set the last set). ``exclude`` (``regime``): the photo regime's
    exclusions (None: :data:`DEFAULT_EXCLUDE`). ``extra``: photos that only train the group head (``group``,
    ``crowd``); ``gate_extra``: trunk features on the gate's photo side (``regime``). ``cv``: run the outer CV
    (True), skip it (False: ``chosen_on`` then has no figures) or its result, already run on ``data`` with the
    same options. ``min_face_frac``: the detector setting the evidence was collected with, written into the
    bundle. ``recalibrate``: called with the fitted stack before writing (``group``, ``crowd``); it may change
    the stack's calibration and returns ``chosen_on`` entries. ``chosen_on`` (first), the method and fit's record,
    then ``notes``: the bundle's ``chosen_on``. ``fit_photos``: a file name beside ``out`` for the list of the
    fitting photos (``chosen_on.fit_photos``).
    """
    _check_kind(kind)
    ev, folds = data.evidence, data.folds
    if kind == "regime":
        opts = opts if opts is not None else RegimeOptions(crowd_set=data.set_names[-1])
        if not isinstance(opts, RegimeOptions):
            raise ConfigError("a regime fit takes RegimeOptions")
        if exclude is not None:
            opts = dataclasses.replace(opts, photo_exclude=tuple(exclude))
    else:
        opts = opts if opts is not None else StackOptions()
        if not isinstance(opts, StackOptions):
            raise ConfigError(f"a {kind} fit takes StackOptions")
    if cv is True and len(np.unique(folds)) < 3:
        raise DatasetError(f"the nested cross-validation needs 3 or more folds (each outer fold's choices are made by "
                           f"CV over the other folds); the fold files give {len(np.unique(folds))}: write more "
                           "folds, or fit without it (fit-bundle --no-cv)")
    if cv is True:
        if log:
            log(f"nested cross-validation over {len(np.unique(folds))} folds of {len(ev)} photos")
        cv = (cross_validate_regimes(ev, folds, opts, gate_extra) if kind == "regime"
              else cross_validate(ev, folds, opts, progress=progress, extra=extra))
    cv_result = cv if isinstance(cv, Mapping) else None
    if log:
        log(f"fitting on all {len(ev)} photos")
    fit: Stack | RegimeStack
    extra_record: dict[str, Any] = {}
    if kind == "regime":
        fit = select_and_fit_regimes(ev, folds, opts, gate_extra)
        method = method_text(kind, opts, 0 if gate_extra is None else len(gate_extra))
    else:
        fit = select_and_fit(ev, folds, opts, extra)
        method = method_text(kind, opts)
        if recalibrate is not None:
            extra_record = dict(recalibrate(fit))
    record = {**dict(chosen_on or {}), **({} if "method" in (chosen_on or {}) else {"method": method}),
              **({} if min_face_frac is None else {"min_face_frac": min_face_frac}),
              **_record(kind, fit, cv_result, data, extra), **extra_record, **dict(notes or {})}
    result = BundleFit(kind, fit, cv_result, record)
    if out is None:
        return result
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = Bundle.load(base)
    if fit_photos is not None:
        result.files.append(_write_fit_photos(out, fit_photos, data.photos, spec))
        record["fit_photos"] = fit_photos
    detector = None if min_face_frac is None else {"min_face_frac": min_face_frac}
    if isinstance(fit, RegimeStack):
        result.path = write_regime_bundle(fit, base, out, trunk, record, scene_trunk=scene_trunk, detector=detector)
    else:
        result.path = write_group_bundle(fit, base, out, trunk, record, scene_trunk=scene_trunk, detector=detector,
                                         **_GROUP_FILES[kind])
    written = Bundle.load(result.path)
    result.files += [b.model for b in written.branches if b.name in FITTED_BRANCHES]
    if written.fusion.file is not None:
        result.files.append(written.fusion.file)
    return result
