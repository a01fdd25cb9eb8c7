"""Group-level evaluation: the seed's tables for each branch and the fusion, all faces vs top-3.

:func:`evaluate_groups` runs a :class:`~groupmood.pipeline.GroupEmotionRecognizer` once over a
labelled set of photos, keeps every face's scores, and then re-pools them offline, so the
"keep all faces / keep top 3 faces" comparison of the slides costs one pass. It writes:

* ``report.json``: overall and per-class accuracy of each branch and of the fusion, per pooling;
* ``confusion_fused.png`` and ``confusion_<branch>.png`` (the bundle's pooling);
* ``scores/<branch>_<pooling>.txt`` (face branches) and ``scores/<branch>.txt`` (global) in the
  authors' format, calibrated as the bundle fuses them (``scores/raw/``: before calibration), and
  ``scores/labels.csv``, so ``groupmood fuse`` with the bundle's weights gives the bundle's labels and
  ``fuse --search`` chooses weights on the same footing.

A branch that abstains on a photo (no face) counts as wrong in ``accuracy`` and is left out of
``accuracy_spoke``; ``coverage`` is the fraction of photos it spoke on. Tables use each branch's
calibration; the ``bundle`` row of the fusion is the recognizer's own decision (with its fusion
model, if any). ``in_sample`` counts the photos the bundle was fitted on (its ``chosen_on.fit_photos``).
"""
from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ..fusion.calibration import calibrate_rows
from ..data.groups import SOURCE_KINDS, read_emotion6, read_gaf, read_image_csv, read_sentibank, read_you2015
from ..errors import DatasetError
from ..fusion import fuse_rows, parse_pooling, pool, pooling_name, write_scores
from ..images import DEFAULT_MAX_PIXELS, load_batches
from ..io import atomic_write_text
from ..labels import GROUP_CLASSES
from ..metrics import accuracy_table
from .evaluate import plot_confusion

if TYPE_CHECKING:
    from ..pipeline import GroupEmotionRecognizer

__all__ = ["EVAL_SET_KINDS", "FIT_ROLES", "evaluate_groups", "format_tables", "in_sample", "read_fit_photos",
           "read_group_items", "write_fit_photos"]

#: What a bundle fitted on each kind of photo listed in its ``chosen_on.fit_photos`` file.
FIT_ROLES: dict[str, str] = {
    "group": "the group head, the temperatures and the fusion weights",
    "global-train": "the whole-image model's training",
    "global-val": "the whole-image model's epoch choice and the fallback temperature",
}
_DIGEST_CHARS = 16  # 64 bits of each photo's sha256: no two photos of a data set share it


def _photo_digest(path: str | Path) -> str:
    from ..weights import sha256_file

    return sha256_file(path)[:_DIGEST_CHARS]


def write_fit_photos(path: str | Path, photos: Sequence[tuple[Path, str]],
                     digests: Sequence[tuple[str, str]] = ()) -> Path:
    """Write the list of a bundle's fitting photos: one ``digest<TAB>role`` line per photo file, sorted;
    ``digests``: (digest, role) lines carried over from another list."""
    unknown = sorted({role for _, role in (*photos, *digests)} - set(FIT_ROLES))
    if unknown:
        raise ValueError(f"unknown fitting role(s) {unknown}; known: {', '.join(FIT_ROLES)}")
    lines = sorted({f"{_photo_digest(p)}\t{role}\n" for p, role in photos} | {f"{d}\t{r}\n" for d, r in digests})
    head = "".join(f"# {role}: {what}\n" for role, what in FIT_ROLES.items())
    atomic_write_text(path, "# sha256[:16] of each photo file a bundle was fitted on, and what it fitted\n" + head
                      + "".join(lines))
    return Path(path)


def read_fit_photos(path: str | Path) -> list[tuple[str, str]]:
    """The (digest, role) lines of a list written by :func:`write_fit_photos`."""
    return [tuple(line.split("\t", 1)) for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]


def in_sample(paths: Sequence[Path], fit_photos: str | Path) -> dict[str, list[Path]]:
    """The photos among ``paths`` that a bundle was fitted on, by role (from its ``chosen_on.fit_photos`` file)."""
    roles: dict[str, str] = {}
    for digest, role in read_fit_photos(fit_photos):
        roles.setdefault(digest, role)
    out: dict[str, list[Path]] = {}
    for p in paths:
        role = roles.get(_photo_digest(p))
        if role is not None:
            out.setdefault(role, []).append(p)
    return out


#: Labelled photo sets :func:`read_group_items` reads: ``auto`` or one of the readers of
#: :mod:`groupmood.data.groups` (not the training ``data.kind`` values, :data:`~groupmood.data.groups.IMAGE_DATA_KINDS`).
EVAL_SET_KINDS: tuple[str, ...] = ("auto", *SOURCE_KINDS)


def read_group_items(path: str | Path, kind: str = "auto", split: str | None = None) -> list[tuple[Path, int, str]]:
    """Labelled photos as (path, class index, name); names are paths relative to the dataset root.

    ``kind`` ``auto`` reads a folder as GAF (``root/[split/]{Positive,Neutral,Negative}/...``)
    unless it holds ``labels.csv``, and a file as a ``path,label`` CSV. ``split`` keeps the photos
    of one of the dataset's own splits (GAF split folders, a CSV ``split`` column).
    """
    readers = {"gaf": read_gaf, "image_csv": read_image_csv, "twitter_you2015": read_you2015,
               "twitter_sentibank603": read_sentibank, "emotion6": read_emotion6}
    p = Path(path)
    if kind == "auto":
        kind = "gaf" if p.is_dir() and not (p / "labels.csv").is_file() else "image_csv"
    if kind not in readers:
        raise DatasetError(f"unknown group dataset kind {kind!r}; choose one of {', '.join(EVAL_SET_KINDS)}")
    if not p.exists():
        raise DatasetError(f"group dataset {p} does not exist; give a GAF-style folder or a CSV path,label")
    table = readers[kind](p)
    keep = np.ones(len(table), dtype=bool)
    if split is not None:
        if table.fixed_split is None:
            raise DatasetError(f"{p} has no split folders or split column; leave out --split to use every photo")
        keep = table.fixed_split == split
        if not keep.any():
            raise DatasetError(f"{p} has no photos in split {split!r}; its splits: "
                               f"{', '.join(sorted(set(table.fixed_split.tolist())))}")
    return [(path_, GROUP_CLASSES.index(str(label)), str(name))
            for path_, label, name, k in zip(table.paths, table.labels, table.names, keep) if k]


def evaluate_groups(recognizer: GroupEmotionRecognizer, items: Sequence[tuple[Path, int, str]], out_dir: str | Path,
                    batch_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS,
                    poolings: Sequence[str] = ("all", "top3"), progress: bool = True,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``recognizer`` over labelled (path, class index, name) photos; write tables, PNGs, score files.

    Unreadable photos are listed under ``errors`` and left out of every table.
    """
    out = Path(out_dir)
    label_of = {p: (y, name) for p, y, name in items}
    branches = recognizer.active_branches(all_branches=True)
    names: list[str] = []
    ys: list[int] = []
    face_scores: dict[str, list[np.ndarray]] = {n: [] for n, b in branches.items() if b.is_face}
    image_scores: dict[str, list[np.ndarray]] = {n: [] for n, b in branches.items() if not b.is_face}
    areas: list[np.ndarray] = []
    fused_pred: list[int] = []
    crowd: list[float] = []
    evaluated: set[Path] = set()
    errors: list[dict[str, str]] = []
    bar = tqdm(total=len(items), unit="photo", disable=not progress, file=sys.stderr, desc="evaluate")
    for good, bad in load_batches([p for p, _, _ in items], batch_size, max_pixels):
        for err in bad:
            errors.append({"file": err.path, "error": err.reason})
            if log:
                log(f"skipped {err}")
        results = recognizer.predict([img for _, img in good], all_branches=True) if good else []
        for (path, _), res in zip(good, results):
            evaluated.add(path)
            ys.append(label_of[path][0])
            fused_pred.append(GROUP_CLASSES.index(res.label) if not res.abstained else -1)
            crowd.append(res.crowd or 0.0)
            names.append(label_of[path][1])
            areas.append(np.array([f.area for f in res.faces]))
            for n in face_scores:
                face_scores[n].append(np.array([f.branch_probs[n] for f in res.faces]).reshape(-1, len(GROUP_CLASSES)))
            for n in image_scores:
                image_scores[n].append(res.branches[n].before_calibration)
        bar.update(len(good) + len(bad))
    bar.close()
    if not names:
        raise DatasetError("no photo of the dataset could be read; see the errors above")
    y = np.asarray(ys)

    variants = {"bundle": {n: b.top_k for n, b in branches.items() if b.is_face}}
    for pname in poolings:
        k = parse_pooling(pname)
        variants[pooling_name(k)] = {n: k for n in face_scores}
    tables: dict[str, dict[str, Any]] = {}
    pooled_all: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for variant, ks in variants.items():
        scores, spoke = {}, {}
        for n in branches:
            if n in face_scores:
                pooled = [pool(s, a, ks[n]) for s, a in zip(face_scores[n], areas)]
                scores[n] = np.stack([p.probs for p in pooled])
                spoke[n] = np.array([p.spoke for p in pooled])
            else:
                scores[n] = np.stack(image_scores[n])
                spoke[n] = np.ones(len(names), dtype=bool)
        calibrated = calibrate_rows(scores, spoke, {n: b.calibration for n, b in branches.items()})
        pooled_all[variant] = {n: (scores[n], calibrated[n], spoke[n]) for n in branches}
        models = {n: accuracy_table(np.where(spoke[n], calibrated[n].argmax(1), -1), y) for n in branches}
        if variant == "bundle":  # the recognizer's own decision (its calibration and fusion, model included)
            models["fused"] = accuracy_table(np.asarray(fused_pred), y)
        else:
            models["fused"] = accuracy_table(_fuse_variant(recognizer, calibrated, spoke, np.asarray(crowd)), y)
        tables[variant] = {"pooling": {n: pooling_name(k) for n, k in ks.items()}, "models": models}

    score_dir = out / "scores"
    files: dict[str, str] = {}
    for variant, per in pooled_all.items():
        if variant == "bundle":
            continue
        for n, (raw, cal, sp) in per.items():
            stem = f"{n}_{variant}" if n in face_scores else n
            kept = [nm for nm, ok in zip(names, sp) if ok]
            for folder, values, key in ((score_dir, cal, f"scores/{stem}"), (score_dir / "raw", raw, f"raw/{stem}")):
                write_scores(folder / f"{stem}.txt", kept, values[sp], fmt="authors")
                files[key] = str(folder / f"{stem}.txt")
    atomic_write_text(score_dir / "labels.csv",
                      "name,label\n" + "".join(_csv_row(n, GROUP_CLASSES[v]) for n, v in zip(names, y)))
    files["labels"] = str(score_dir / "labels.csv")
    atomic_write_text(score_dir / "faces.csv",
                      "name,faces\n" + "".join(_csv_row(n, str(len(a))) for n, a in zip(names, areas)))
    files["faces"] = str(score_dir / "faces.csv")
    for n, t in tables["bundle"]["models"].items():
        png = plot_confusion(t["confusion"], GROUP_CLASSES, out / f"confusion_{n}.png",
                             f"{n}: acc {t['accuracy']:.3f}, n={t['n']}")
        files[f"confusion_{n}"] = str(png)
    report = {"n": len(names), "weights": dict(recognizer.weights), "chosen_on": recognizer.chosen_on,
              "in_sample": _in_sample_report(recognizer.chosen_on, [p for p, _, _ in items if p in evaluated]),
              "tables": tables, "errors": errors, "files": files}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    return report


def _fuse_variant(recognizer: GroupEmotionRecognizer, calibrated: Mapping[str, np.ndarray],
                  spoke: Mapping[str, np.ndarray], crowd: np.ndarray) -> np.ndarray:
    """The recognizer's weighted fusion (both regimes mixed by ``crowd`` when it has a gate) of score rows:
    class indices, -1 for an abstention."""
    probs, index = fuse_rows(calibrated, recognizer.weights, spoke, recognizer.fallback)
    regime = recognizer.regime
    if regime is None:
        return index
    crowd_probs, crowd_index = fuse_rows(calibrated, regime.weights, spoke, regime.fallback)
    p = np.where(crowd_index < 0, 0.0, np.where(index < 0, 1.0, crowd))[:, None]
    mixed = (1 - p) * probs + p * crowd_probs
    return np.where((index < 0) & (crowd_index < 0), -1, mixed.argmax(1))


def _in_sample_report(chosen_on: Mapping[str, Any] | None, paths: Sequence[Path]) -> dict[str, Any]:
    """How many evaluated photos the bundle was fitted on, per role; ``known`` False where the bundle lists none."""
    listed = (chosen_on or {}).get("fit_photos")
    if not listed or not Path(listed).is_file():
        return {"known": False, "n": 0, "roles": {}}
    found = in_sample(paths, listed)
    return {"known": True, "n": len({p for ps in found.values() for p in ps}), "of": len(paths),
            "roles": {role: len(ps) for role, ps in found.items()}}


def in_sample_note(report: Mapping[str, Any]) -> str | None:
    """A warning line when evaluated photos were among the bundle's fitting photos (in-sample figures)."""
    ins = report.get("in_sample") or {}
    if not ins.get("n"):
        return None
    roles = "; ".join(f"{n} fitted {FIT_ROLES.get(role, role)}" for role, n in ins["roles"].items())
    held_out = (report.get("chosen_on") or {}).get("cv_accuracy")
    cv = (f"; the bundle's cross-validated accuracy on its fitting photos is {100 * held_out:.1f}% "
          "(chosen_on.cv_accuracy)") if held_out is not None else ""
    return (f"note: {ins['n']} of the {ins['of']} photos evaluated were used to fit this bundle ({roles}): the "
            f"figures above are in-sample for them, not held out{cv}")


def _csv_row(*fields: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def format_tables(report: Mapping[str, Any]) -> str:
    """The report's accuracy tables as text: one block per pooling, one row per branch and the fusion."""
    lines = []
    for variant, table in report["tables"].items():
        pools = ", ".join(f"{n} {p}" for n, p in table["pooling"].items())
        lines.append(f"pooling: {variant} ({pools})")
        lines.append(f"  {'model':<14}{'overall':>9}{'coverage':>10}" + "".join(f"{c:>10}" for c in GROUP_CLASSES))
        for n, t in table["models"].items():
            per = "".join(f"{_pct(t['per_class'][c]['accuracy']):>10}" for c in GROUP_CLASSES)
            lines.append(f"  {n:<14}{_pct(t['accuracy']):>9}{_pct(t['coverage']):>10}{per}")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"
