"""Group accuracy on crowds and on group photos together: one nested CV over crowd-dev and multiemova-dev.

The procedure of ``benchmarks/group_accuracy.py`` (group head, temperatures, fusion, every choice made
on the other folds alone: :func:`groupmood.engine.group_cv.cross_validate`) on the union of the two
group sets, with one more candidate branch: a scene head, a group-class logistic regression on the
whole-image branch's frozen ImageNet trunk features (``scene``), chosen and fitted inside the folds.
Outer fold k holds out fold k of both sets (``configs/splits/multiemova_dev_folds.json`` and
``configs/splits/crowd_dev_folds.json``, stratified by label, seed 0, committed). Each detector setting
of ``--min-face-frac`` gets its own evidence and CV; the figures are reported per set, per class, per
number of faces found, with 95% Wilson intervals, beside the shipped bundle on the same crowd photos.

With ``--write-bundle`` the same procedure then runs on every photo of both sets (the first
``--min-face-frac``) and its result becomes the shipped ``crowd`` bundle (``predict --bundle crowd``:
``src/groupmood/assets/bundle_crowd.yaml``, its group head ``face_group_crowd.safetensors`` and scene
model ``global_scene.safetensors``, its fitting photos ``fit_photos_crowd.tsv``). With ``--regimes
--write-default`` the regime procedure (:mod:`groupmood.engine.regime_cv`) fitted on both sets becomes
the default bundle (``bundle.yaml``, its gate ``regime_gate.safetensors``). Both go through
:func:`groupmood.engine.bundle_fit.fit_bundle` (what ``groupmood fit-bundle --kind crowd`` / ``--kind
regime`` runs); ``--bundle-dir DIR`` writes them (and measures them) elsewhere than the package's assets.

    .venv/bin/python benchmarks/crowd_accuracy.py --min-face-frac 0.05,0.03   # about 20 min on 2 cores
    .venv/bin/python benchmarks/crowd_accuracy.py --min-face-frac 0.05 --write-bundle --no-baseline
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _common import REPO, command_line, loadavg, publish_result
from group_accuracy import (BUNDLE, EXCLUDED, FOLDS, HEADER, TRUNK, evaluate_bundle, evidence_key, fer_peer,
                            gaf_sample_items, intervals, log, multiemova_items, row, sentiment_items)

CROWD_FOLDS = REPO / "configs" / "splits" / "crowd_dev_folds.json"
#: Kept out of the fit: the aligned branch (group_accuracy.EXCLUDED) and the sentiment-trained whole-image branch,
#: which the scene head reads the same trunk for: on crowd-dev it is right on 31% (never Neutral), got weight 0
#: in every fold, and its temperature fitted there ran to 1e7 (a flat vote).
CROWD_EXCLUDED = (*EXCLUDED, "global")
SETS = ("multiemova-dev", "crowd-dev")
BUCKETS = ((0, 0, "0"), (1, 1, "1"), (2, 5, "2-5"), (6, 10**9, "6+"))
#: What the crowd and default bundles are fitted on, as their ``chosen_on`` says.
FITTED_ON = {"data": "crowd-dev (926 WIDER crowd photos, group mood) and multiemova-dev (127 group photos, group "
                     "valence), ../shared/data",
             "folds": "configs/splits/crowd_dev_folds.json, configs/splits/multiemova_dev_folds.json",
             "fit_photos": "fit_photos_crowd.tsv"}


def crowd_items(shared: Path) -> list[tuple[Path, int, str]]:
    from groupmood.engine.group_eval import read_group_items

    return read_group_items(shared / "crowd-dev")


def photo_sets(args, items: dict, key: str, frac: float) -> list:
    """The two sets (:class:`groupmood.engine.bundle_fit.PhotoSet`): their photos, committed folds and evidence caches
    (collected under the bundle's base branches and a detector with ``frac``, whole-image trunk features
    included)."""
    from groupmood.engine.bundle_fit import PhotoSet

    return [PhotoSet(name, items[name], FOLDS if name == "multiemova-dev" else CROWD_FOLDS,
                     args.out / f"evidence_{name}-{key}-frac{frac}.npz") for name in SETS]


def buckets(pred: np.ndarray, y: np.ndarray, n_faces: np.ndarray) -> list[str]:
    out = []
    for lo, hi, name in BUCKETS:
        m = (n_faces >= lo) & (n_faces <= hi)
        if m.any():
            out.append(f"{name} faces: {(pred[m] == y[m]).mean():.1%} of {m.sum()}")
    return out


def write_crowd_bundle(args, data, opts, frac: float, cv: dict) -> list[str]:
    """Fit on every photo of both sets and write the shipped crowd bundle beside the default one."""
    from groupmood.engine.bundle_fit import fit_bundle
    from groupmood.pipeline import SHIPPED_BUNDLES

    out = args.bundle_dir / SHIPPED_BUNDLES["crowd"]
    # fit_photos_crowd.tsv: both sets' photos, and the whole-image branch's (it stays as the base bundle fitted it)
    # carried over from the base bundle's list
    chosen_on = {
        **FITTED_ON,
        "method": "group head c, scene head c (logistic regression on the whole-image branch's ImageNet trunk), "
                  "temperatures, fusion among each branch alone, the weighted average and a fusion model; all by "
                  "balanced accuracy in 5-fold CV over both sets together, then fitted on all their photos"}
    notes = {"excluded": f"{args.exclude} (weight 0, kept out of calibration and fusion: see CROWD_EXCLUDED in "
                         "benchmarks/crowd_accuracy.py)",
             "command": command_line()}
    stack = fit_bundle("crowd", data, args.bundle, out, trunk=TRUNK, opts=opts, cv=cv, min_face_frac=frac,
                       chosen_on=chosen_on, notes=notes, fit_photos=FITTED_ON["fit_photos"], log=log).stack
    return [f"Crowd bundle written (`{out.name}`): head c={stack.head_c}, scene c={stack.scene_c}, fusion "
            f"{stack.fusion}, weights { {b: round(w, 2) for b, w in stack.weights.items()} }.", ""]


def gate_extra(args, key: str) -> np.ndarray | None:
    """The whole-image trunk features of the global recipe's sentiment training photos (``--gate-extra``), which join
    the gate's photo side: photos without a group, where the photo regime's whole-image fallback belongs."""
    if not args.gate_extra:
        return None
    from groupmood.engine.bundle_fit import gate_extra_features

    cache = args.out / f"gate_extra-{key}.npy"
    paths = [] if cache.is_file() else [p for p, _, _ in sentiment_items(args.shared, "train")]
    return gate_extra_features(args.bundle, paths, cache, "global", log=log)


def regime_rows(ev, folds: np.ndarray, n_faces: np.ndarray, report: dict,
                extra: np.ndarray | None) -> tuple[list[str], dict]:
    """Nested CV of the regime bundle's procedure (:mod:`groupmood.engine.regime_cv`): rows per set and class, and
    the CV's result."""
    from groupmood.engine.regime_cv import cross_validate_regimes
    from groupmood.metrics import accuracy_table

    cv = cross_validate_regimes(ev, folds, gate_extra=extra)
    fused = cv["oof_fused"].argmax(1)
    rows = ["**Regimes: the photo fusion (fitted on multiemova-dev) and the crowd fusion (fitted on both sets) mixed "
            "by the whole-image gate; nested 5-fold CV over both sets** (the default bundle's procedure; "
            f"{0 if extra is None else len(extra)} sentiment training photos on the gate's photo side)", "",
            *HEADER]
    report["regimes"] = {}
    for name in SETS:
        m = ev.sets == name
        t = accuracy_table(fused[m], ev.labels[m])
        report["regimes"][name] = t
        rows.append(row(f"**regimes, {name} (held-out)**", t))
    rows.append("")
    for name in SETS:
        m = ev.sets == name
        t = report["regimes"][name]
        rows.append(f"- {name}: {intervals(t)}; balanced {t['mean_class_accuracy']:.1%}; gate says crowd on "
                    f"{(cv['oof_gate'][m] > 0.5).mean():.1%}; by faces found: "
                    f"{', '.join(buckets(fused[m], ev.labels[m], n_faces[m]))}.")
    rows += ["", "Choices per outer fold: " + "; ".join(
        f"fold {f['fold']}: gate c={f['gate_c']}, photo {f['photo']['fusion']} {f['photo']['weights']}, crowd "
        f"{f['crowd']['fusion']} {f['crowd']['weights']}" for f in cv["folds"]), ""]
    return rows, cv


def write_default_bundle(args, data, frac: float, cv: dict, extra: np.ndarray | None) -> list[str]:
    """Fit the regimes on every photo of both sets and write the shipped default bundle."""
    from groupmood.engine.bundle_fit import fit_bundle
    from groupmood.pipeline import SHIPPED_BUNDLES

    chosen_on = {
        **FITTED_ON,
        "method": "photo regime: group head c, temperatures, fusion (single branch or weighted average) by balanced "
                  "accuracy in 5-fold CV on multiemova-dev; crowd regime: the same with the scene head on both sets; "
                  "gate: class-balanced logistic regression on the whole-image trunk telling crowd-dev from "
                  "multiemova-dev (the global recipe's sentiment training photos, "
                  f"{0 if extra is None else len(extra)}, on its photo side in every fit), c by balanced accuracy "
                  "in the same folds; all fitted on every photo; "
                  "label = argmax((1 - p) photo + p crowd)"}
    fit = fit_bundle("regime", data, args.bundle, args.bundle_dir / SHIPPED_BUNDLES["default"], trunk=TRUNK,
                     gate_extra=extra, cv=cv, min_face_frac=frac, chosen_on=chosen_on,
                     notes={"command": command_line()}, log=log)
    rs = fit.stack
    return [f"Default bundle written (`{fit.path.name}`): photo {rs.photo.fusion} "
            f"{ {b: round(w, 2) for b, w in rs.photo.weights.items()} }, crowd {rs.crowd.fusion} "
            f"{ {b: round(w, 2) for b, w in rs.crowd.weights.items()} }, gate c={rs.gate_c}.", ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "crowd_accuracy")
    ap.add_argument("--min-face-frac", default="0.05", help="detector settings to compare, comma-separated")
    ap.add_argument("--per-set", action="store_true", help="choices score the mean of each set's figure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true", help="skip the shipped bundle on crowd-dev")
    ap.add_argument("--no-peer", action="store_true", help="skip fer's face average on both sets")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    ap.add_argument("--no-tests", action="store_true",
                    help="skip the crowd bundle on the test sets (gaf-samples, sentiment test photos)")
    ap.add_argument("--exclude", default=",".join(CROWD_EXCLUDED),
                    help="branches kept out of calibration and fusion (default %(default)s: see CROWD_EXCLUDED)")
    ap.add_argument("--regimes", action="store_true",
                    help="also the nested CV of the default bundle's procedure (two regimes and a gate)")
    ap.add_argument("--no-gate-extra", dest="gate_extra", action="store_false",
                    help="fit the gate on the two group sets alone (default: the sentiment training photos join its "
                         "photo side)")
    ap.add_argument("--write-default", action="store_true",
                    help="with --regimes: fit the regimes on both sets (the first --min-face-frac) and write the "
                         "shipped default bundle")
    ap.add_argument("--write-bundle", action="store_true",
                    help="fit on both sets (the first --min-face-frac) and write the shipped crowd bundle")
    ap.add_argument("--bundle-dir", type=Path, default=None,
                    help="where --write-bundle and --write-default write the bundles and their model files, and "
                         "whose bundles are measured on the test sets (default: the package's assets folder)")
    args = ap.parse_args(argv)
    import torch

    from groupmood.engine.bundle_fit import load_sets
    from groupmood.engine.group_cv import StackOptions, cross_validate
    from groupmood.io import atomic_write_text
    from groupmood.labels import GROUP_CLASSES
    from groupmood.metrics import accuracy_table
    from groupmood.pipeline import SHIPPED_BUNDLES, GroupEmotionRecognizer, bundle_path

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    args.bundle_dir = args.bundle_dir or bundle_path("default").parent
    args.out.mkdir(parents=True, exist_ok=True)
    items = {"multiemova-dev": multiemova_items(args.shared), "crowd-dev": crowd_items(args.shared)}
    key = evidence_key(args.bundle)
    opts = StackOptions(per_set=args.per_set)
    rows: list[str] = []
    report: dict = {}
    for frac in (float(f) for f in args.min_face_frac.split(",")):
        data = load_sets("crowd", args.bundle, photo_sets(args, items, key, frac), TRUNK,
                         exclude=[b for b in args.exclude.split(",") if b], min_face_frac=frac,
                         write_missing_folds=True, log=log)
        ev = data.evidence
        cv = cross_validate(ev, data.folds, opts, progress=False)
        fused = np.asarray(cv["oof_fused"]).argmax(1)
        n_faces = np.array([len(e) for e in ev.embeddings])
        rows += [f"**min_face_frac {frac}: nested 5-fold CV over both sets** ({len(ev)} photos; scene head among the "
                 f"candidates; choices {'scored per set' if args.per_set else 'scored on the union'})", "", *HEADER]
        report[str(frac)] = {}
        for name in SETS:
            m = ev.sets == name
            t = accuracy_table(fused[m], ev.labels[m])
            report[str(frac)][name] = t
            rows.append(row(f"**fused, {name} (held-out)**", t))
            for b in cv["tables"]:
                if b != "fused":
                    pred = np.where(cv["oof_spoke"][b], np.argmax(cv["oof_raw"][b], axis=1), -1)
                    rows.append(row(f"{b}, {name} (held-out)", accuracy_table(pred[m], ev.labels[m])))
        rows.append("")
        for name in SETS:
            m = ev.sets == name
            per = np.bincount(ev.labels[m], minlength=3)
            rows.append(f"- {name} ({', '.join(f'{c} {n}' for c, n in zip(GROUP_CLASSES, per))}): "
                        f"{intervals(report[str(frac)][name])}; balanced "
                        f"{report[str(frac)][name]['mean_class_accuracy']:.1%}; by faces found: "
                        f"{', '.join(buckets(fused[m], ev.labels[m], n_faces[m]))}.")
        rows += ["", "Choices per outer fold: " + "; ".join(
            f"fold {f['fold']}: head c={f['head_c']}, scene c={f['scene_c']}, {f['fusion']}, weights {f['weights']}"
            for f in cv["folds"]), ""]
        first = frac == float(args.min_face_frac.split(",")[0])
        if args.regimes:
            full = load_sets("regime", args.bundle, photo_sets(args, items, key, frac), TRUNK, min_face_frac=frac,
                             log=log)
            extra = gate_extra(args, key)
            regime, regime_cv = regime_rows(full.evidence, full.folds, n_faces, report.setdefault(str(frac), {}),
                                            extra)
            rows += regime
            if args.write_default and first:
                rows += write_default_bundle(args, full, frac, regime_cv, extra)
        if args.write_bundle and first:
            rows += write_crowd_bundle(args, data, opts, frac, cv)
    if not args.no_baseline:
        rec = GroupEmotionRecognizer.from_bundle(args.bundle)
        tables, _ = evaluate_bundle(rec, items["crowd-dev"])
        report["shipped bundle on crowd-dev"] = tables
        rows += [f"**crowd-dev ({len(items['crowd-dev'])} photos), the shipped bundle as it is** (nothing fitted on "
                 "crowd-dev)", "", *HEADER, *[row(b, t) for b, t in tables.items()], "",
                 f"Majority class (Neutral): {np.mean([y == 1 for _, y, _ in items['crowd-dev']]):.1%}.", ""]
    if not args.no_peer:
        rows += ["**fer 25.10.3 face average on the same photos** (peer, nothing fitted; each face's emotions read as "
                 "valence and summed per photo; no face found: counted wrong)", "", *HEADER]
        for name in SETS:
            peer = fer_peer(items[name], args.threads)
            report[f"fer {name}"] = peer
            rows.append(row(f"fer 25.10.3, {name}", peer))
        rows += ["", *[f"- fer, {name}: {intervals(report[f'fer {name}'])}." for name in SETS], ""]
    tests = {"gaf-samples (16 GAF 3.0 photos, 8 Positive, 8 Negative; test only)": gaf_sample_items(args.shared),
             "sentiment test photos (you2015 5-agree, sentibank603, emotion6; photo sentiment, test only)":
                 sentiment_items(args.shared, "test")}
    for shipped in ([] if args.no_tests else ["default", "crowd"]):
        rec = GroupEmotionRecognizer.from_bundle(args.bundle_dir / SHIPPED_BUNDLES[shipped])
        for title, its in tests.items():
            tables, _ = evaluate_bundle(rec, its)
            report[f"{shipped} bundle on {title}"] = tables
            rows += [f"**{title}, the {shipped} bundle**", "", *HEADER, *[row(b, t) for b, t in tables.items()], ""]
    print("\n".join(rows))
    publish_result("Group accuracy on crowds and group photos (two-set CV, scene head; the crowd bundle)", args.threads,
                   load_start, ["Abstentions count as wrong. The scene head and every choice are fitted inside the "
                                "folds; with --write-bundle the same procedure on every photo writes the crowd bundle "
                                "(`predict --bundle crowd`); the default bundle is not touched."], rows,
                   not args.no_write)
    atomic_write_text(args.out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
