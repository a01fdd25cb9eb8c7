"""Group-level accuracy on real group photos, chosen honestly; fits the default bundle with --write-bundle.

1. ``multiemova-dev`` (127 real group photos, the annotators' group valence) is the group
   validation set. Everything fitted on it (a group-face head on the non-aligned branch's frozen
   trunk, every branch's temperature, the fusion weights or a fusion model) is chosen by
   5-fold cross-validation over the committed folds ``configs/splits/multiemova_dev_folds.json``,
   nested: each outer fold's choices are made on the other four folds alone
   (:func:`groupmood.engine.group_cv.cross_validate`). The figure reported is the accuracy of
   those held-out labels. With ``--write-bundle`` the same procedure then runs on all 127 photos
   and its result becomes the photo bundle (``src/groupmood/assets/bundle_photo.yaml``), through
   :func:`groupmood.engine.bundle_fit.fit_bundle` (what ``groupmood fit-bundle --kind group`` runs),
   with the fallback's temperature fitted on the sentiment photos it labels.
2. The shipped bundle (as written) on photos it never saw: ``gaf-samples`` (8 Positive, 8 Negative
   GAF 3.0 photos; looked at, never tuned on) and the held-out test photos of the image-sentiment
   sets (``configs/splits/global``; photo sentiment, not group emotion; the Twitter sets have no
   Neutral).
3. The peer, on the same photos in the same run: fer 25.10.3 ``FER(mtcnn=True)``, each face's seven
   emotions mapped to valence (happy, surprise: Positive; neutral: Neutral; the rest: Negative)
   and summed over the photo's faces. A photo where fer finds no face counts as wrong. fer is
   installed outside the project on first use, as ``benchmarks/predict.py`` does.

With ``--extra-head-data`` the group head also trains on the train and val photos of the two
Twitter sentiment sets with at least the bundle's ``min_faces`` faces (photo sentiment, Positive /
Negative only: a proxy for group valence; their test split is never used), on the training side of
every head fit only, weighted per photo by an ``extra_weight`` chosen with the head's ``c`` inside
the nested CV (grid ``--extra-weights``); calibration and fusion stay multiemova-dev only. Their
evidence is collected once and cached in ``runs/group_accuracy/extra_evidence-KEY.npz`` (KEY: a hash of
the bundle's base branches and detector, as for the multiemova-dev evidence).

Appends the tables to benchmarks/RESULTS.md and writes runs/group_accuracy/report.json.

    .venv/bin/python benchmarks/group_accuracy.py --write-bundle   # fit, ship, measure (about 15 min on 2 cores)
    .venv/bin/python benchmarks/group_accuracy.py                  # measure the bundle as it is
    .venv/bin/python benchmarks/group_accuracy.py --extra-head-data --cv-only --no-write   # the CV with extra head data
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _common import REPO, loadavg, publish_result

BUNDLE = REPO / "src" / "groupmood" / "assets" / "bundle_photo.yaml"
FOLDS = REPO / "configs" / "splits" / "multiemova_dev_folds.json"
TRUNK = "nonaligned"
#: fer's emotions -> group class (the mapping the issue's peer figure used).
FER_VALENCE = {"happy": 2, "surprise": 2, "neutral": 1, "angry": 0, "disgust": 0, "fear": 0, "sad": 0}


def sentiment_items(shared: Path, split: str) -> list[tuple[Path, int, str]]:
    """(path, class, name) of one split of the global recipe's sources, named source/relative path."""
    from groupmood.config import load_config
    from groupmood.data.groups import read_source, source_specs
    from groupmood.data.splits import split_indices
    from groupmood.labels import GROUP_CLASSES

    data = load_config(REPO / "configs" / "base_global.yaml")["data"]
    items = []
    for spec in source_specs(data):
        spec["root"] = str(shared / Path(spec["root"]).name)
        table = read_source(spec)
        split_file = REPO / data["split_dir"] / f"{spec['name']}.json"
        for i in split_indices(split_file, table.names, spec["name"], "retrain the global recipe").get(split, []):
            items.append((Path(table.paths[i]), GROUP_CLASSES.index(str(table.labels[i])),
                          f"{spec['name']}/{table.names[i]}"))
    return items


#: The sources whose train and val photos may join the group head's training side (--extra-head-data):
#: photo-level Positive / Negative sentiment, a proxy for group valence; their test split stays untouched.
EXTRA_SOURCES = ("twitter_you2015", "twitter_sentibank603")


def extra_head_items(shared: Path) -> list[tuple[Path, int, str]]:
    """The train and val photos of the Twitter sentiment sets (never their test split)."""
    return [it for split in ("train", "val") for it in sentiment_items(shared, split)
            if it[2].split("/", 1)[0] in EXTRA_SOURCES]


def gaf_sample_items(shared: Path) -> list[tuple[Path, int, str]]:
    """The 16 gaf-samples photos, labelled by their name (pos_ / neg_)."""
    from groupmood.labels import GROUP_CLASSES

    out = []
    for p in sorted((shared / "gaf-samples").iterdir()):
        label = {"pos": "Positive", "neg": "Negative"}.get(p.name.split("_")[0])
        if label:
            out.append((p, GROUP_CLASSES.index(label), p.name))
    return out


def multiemova_items(shared: Path) -> list[tuple[Path, int, str]]:
    from groupmood.engine.group_eval import read_group_items

    return read_group_items(shared / "multiemova-dev")


def cached_evidence(bundle: Path, items: Callable[[], list[tuple[Path, int, str]]], cache: Path):
    """The evidence of the labelled photos ``items()`` under the bundle's base branches: collected once, then read
    from ``cache`` (named with :func:`evidence_key`, so other branches never reuse it; the photo list is
    only read when collecting)."""
    from groupmood.engine.bundle_fit import cached_evidence

    return cached_evidence(bundle, items, cache, TRUNK, log=log)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def extra_head_evidence(shared: Path, bundle: Path, cache: Path, min_faces: int):
    """The extra head photos' evidence (collected once, cached), kept to those with at least ``min_faces`` faces."""
    items = extra_head_items(shared)
    ev = cached_evidence(bundle, lambda: items, cache)
    unknown = set(ev.names) - {n for _, _, n in items}
    if unknown:
        raise SystemExit(f"{cache} holds photos outside the train and val splits ({sorted(unknown)[:3]}...); "
                         "delete it to collect again")
    keep = [i for i, e in enumerate(ev.embeddings) if len(e) >= min_faces]
    return ev.subset(keep), len(items)


def evidence_key(bundle: Path) -> str:
    """A short hash of what the evidence depends on (:func:`groupmood.engine.bundle_fit.evidence_key`)."""
    from groupmood.engine.bundle_fit import evidence_key

    return evidence_key(bundle)


def fallback_photos(ev, branch: str) -> np.ndarray:
    """The photos of ``ev`` that fallback ``branch`` labels: it spoke and no face branch did (too few faces)."""
    faces_spoke = np.zeros(len(ev), dtype=bool)
    for b in ev.face_branches:
        faces_spoke |= ev.spoke[b]
    return ev.spoke[branch] & ~faces_spoke


def fallback_calibration(shared: Path, bundle: Path, stack, out: Path, key: str):
    """Temperatures for the fallback-only branches (weight 0), fitted on the photos they decide.

    multiemova-dev has no such photo (every one has two or more faces), so a fallback branch's
    temperature fitted there describes it where it never speaks. Here it is fitted on the sentiment
    validation photos where no face branch spoke, fewer than the bundle's ``min_faces`` faces
    (:func:`fallback_photos`: the photos the fallback labels; photo
    sentiment, the Twitter sets without Neutral) and checked on the test photos of the same kind.
    The temperature changes no label, only how sure the label says it is. Returns the calibrations
    and, per branch, NLL / ECE on those test photos with the multiemova-dev temperature and the new one.
    """
    from groupmood.fusion.calibration import expected_calibration_error, fit_calibration, negative_log_likelihood

    only = [b for b in stack.fallback if stack.weights.get(b, 0.0) == 0.0]
    if not only:
        return {}, {}
    val, test = (cached_evidence(bundle, lambda s=s: sentiment_items(shared, s),
                                 out / f"evidence_sentiment-{s}-{key}.npz") for s in ("val", "test"))
    cals, stats = {}, {}
    for b in only:
        fit_on, check = fallback_photos(val, b), fallback_photos(test, b)
        cals[b] = fit_calibration(val.probs[b][fit_on], val.labels[fit_on])
        p, y = test.probs[b][check], test.labels[check]
        before, after = stack.calibration[b].apply(p), cals[b].apply(p)
        stats[b] = {"fitted_on": int(fit_on.sum()), "checked_on": int(check.sum()),
                    "temperature_before": round(stack.calibration[b].temperature, 3),
                    "temperature": round(cals[b].temperature, 3),
                    "test_nll_before": round(negative_log_likelihood(before, y), 4),
                    "test_nll": round(negative_log_likelihood(after, y), 4),
                    "test_ece_before": round(expected_calibration_error(before, y), 4),
                    "test_ece": round(expected_calibration_error(after, y), 4),
                    "test_accuracy": round(float((p.argmax(1) == y).mean()), 4)}
    return cals, stats


def kept_choices(bundle: Path) -> dict:
    """The base bundle's ``chosen_on`` entries that this script does not choose (``min_faces``: benchmarks/min_faces.py;
    ``fit_photos``, the list of fitting photos beside the bundle: benchmarks/fit_photos.py)."""
    from groupmood.pipeline import Bundle

    chosen = Bundle.load(bundle).chosen_on
    kept = {k: chosen[k] for k in ("min_faces",) if k in chosen}
    if "fit_photos" in chosen:
        kept["fit_photos"] = Path(chosen["fit_photos"]).name
    return kept


def labelled_results(rec, items: list[tuple[Path, int, str]]):
    """(class index, GroupResult) of each readable labelled photo, every branch run; unreadable ones reported."""
    from groupmood.images import load_batches

    label = {p: y for p, y, _ in items}
    for good, bad in load_batches([p for p, _, _ in items], 8):
        for err in bad:
            print(f"skipped {err}", file=sys.stderr)
        for (path, _), res in zip(good, rec.predict([img for _, img in good], all_branches=True) if good else []):
            yield label[path], res


def evaluate_bundle(rec, items: list[tuple[Path, int, str]]) -> tuple[dict, dict]:
    """Per-branch (calibrated, as the bundle fuses them) and fused accuracy of a recognizer on labelled photos,
    on all of them and on those where MTCNN found a face."""
    from groupmood.labels import GROUP_CLASSES
    from groupmood.metrics import accuracy_table

    preds: dict[str, list[int]] = {}
    ys, has_face = [], []
    for y, res in labelled_results(rec, items):
        ys.append(y)
        has_face.append(bool(res.faces))
        for b, r in res.branches.items():
            preds.setdefault(b, []).append(int(np.argmax(r.probs)) if r.spoke else -1)
        preds.setdefault("fused", []).append(-1 if res.abstained else GROUP_CLASSES.index(res.label))
    y, face = np.array(ys), np.array(has_face)
    return ({b: accuracy_table(np.array(p), y) for b, p in preds.items()},
            {b: accuracy_table(np.array(p)[face], y[face]) for b, p in preds.items()} if face.any() else {})


def fer_peer(items: list[tuple[Path, int, str]], threads: int) -> dict:
    """fer 25.10.3's face-average valence on the photos (no face: counted wrong)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from predict import PEERS, FerClient, ensure_fer

    from groupmood.metrics import accuracy_table

    peer = PEERS["25.10.3"]
    ensure_fer([peer])
    client = FerClient(threads, peer)
    pred, ys = [], []
    try:
        for path, y, _ in items:
            ans = client.ask({"path": str(path)})
            ys.append(y)
            if "error" in ans or not ans.get("emotions"):
                pred.append(-1)
                continue
            total = np.zeros(3)
            for face in ans["emotions"]:
                for emo, v in face.items():
                    total[FER_VALENCE[emo]] += v
            pred.append(int(np.argmax(total)))
    finally:
        client.close()
    return accuracy_table(np.array(pred), np.array(ys))


def intervals(t: dict) -> str:
    """An accuracy table's overall and per-class figures with their 95% Wilson intervals."""
    from groupmood.metrics import wilson_interval

    def one(acc: float, n: int) -> str:
        lo, hi = wilson_interval(round(acc * n), n)
        return f"{acc:.1%} ({lo:.1%}-{hi:.1%}, n={n})"

    parts = [f"accuracy {one(t['accuracy'], t['n'])}"]
    parts += [f"{c} {one(v['accuracy'], v['support'])}" for c, v in t["per_class"].items() if v["support"]]
    return ", ".join(parts)


def row(name: str, t: dict) -> str:
    per = t["per_class"]
    cells = [f"{per[c]['accuracy']:.3f}" if per[c]["support"] else "-" for c in ("Negative", "Neutral", "Positive")]
    return f"| {name} | **{t['accuracy']:.3f}** | {' | '.join(cells)} | {round(t['coverage'] * t['n'])} / {t['n']} |"


#: Branches the fit leaves at weight 0 by default. The aligned branch: the nested CV on multiemova-dev
#: gives the same fused figures with and without it among the candidates (81.9%, Negative 71.4%,
#: Neutral 83.8%, Positive 87.3%; 2026-11-30), while voting it costs a run 15% of its time on the 228
#: benchmark photos and five times the memory on 24 MP photos (its 112x96 crops need photos decoded
#: with a 2,240 px shorter side instead of 960 px).
EXCLUDED = ("aligned",)

HEADER = ["| model | accuracy | Negative | Neutral | Positive | photos it spoke on |", "|---|---:|---:|---:|---:|---:|"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "group_accuracy")
    ap.add_argument("--folds", type=Path, default=FOLDS)
    ap.add_argument("--write-bundle", action="store_true", help="fit on all of multiemova-dev and write the bundle")
    ap.add_argument("--no-peer", action="store_true", help="skip fer")
    ap.add_argument("--no-sentiment", action="store_true", help="skip the 771 sentiment test photos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--extra-head-data", action="store_true",
                    help="train the group head also on the Twitter sentiment sets' train and val photos with at "
                         "least min_faces faces (training side only; weight chosen in the nested CV)")
    ap.add_argument("--extra-weights", default="0,0.1,0.3,1.0",
                    help="with --extra-head-data: the extra photos' weight grid (relative to a multiemova-dev "
                         "photo), chosen with the head's c inside the CV; one value fixes it (default %(default)s)")
    ap.add_argument("--cv-only", action="store_true", help="stop after the multiemova-dev CV (no bundle measured)")
    ap.add_argument("--exclude", default=",".join(EXCLUDED),
                    help="branches kept out of calibration and fusion (weight 0: predict does not run them); "
                         "comma-separated, '' for none (default %(default)s: see EXCLUDED)")
    args = ap.parse_args(argv)
    import torch

    from groupmood.engine.bundle_fit import PhotoSet, fit_bundle, load_sets
    from groupmood.engine.group_cv import StackOptions, cross_validate
    from groupmood.io import atomic_write_text
    from groupmood.pipeline import GroupEmotionRecognizer

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    dev_items = multiemova_items(args.shared)
    key = evidence_key(args.bundle)
    excluded = [b for b in args.exclude.split(",") if b]
    data = load_sets("group", args.bundle, [PhotoSet("multiemova-dev", dev_items, args.folds,
                                                     args.out / f"evidence_multiemova-dev-{key}.npz")],
                     TRUNK, exclude=excluded, write_missing_folds=True, log=log)
    ev, folds = data.evidence, data.folds
    opts = StackOptions()
    extra, extra_note = None, ""
    if args.extra_head_data:
        from groupmood.pipeline import Bundle

        min_faces = Bundle.load(args.bundle).min_faces
        extra, n_items = extra_head_evidence(args.shared, args.bundle, args.out / f"extra_evidence-{key}.npz",
                                               min_faces)
        opts = StackOptions(extra_weights=tuple(float(w) for w in args.extra_weights.split(",")))
        per = np.bincount(extra.labels, minlength=3)
        extra_note = (f"; group head also trained on {len(extra)} of the {n_items} train + val photos of "
                      f"{' and '.join(EXTRA_SOURCES)} with {min_faces}+ faces (Negative {per[0]}, Positive {per[2]}; "
                      f"photo sentiment, a proxy), training side only, extra_weight from {opts.extra_weights} "
                      "chosen in the CV")
    cv = cross_validate(ev, folds, opts, extra=extra)
    report: dict = {"cv": {k: v for k, v in cv.items() if not k.startswith("oof_")}}
    rel_folds = args.folds.relative_to(REPO) if args.folds.is_relative_to(REPO) else args.folds
    rows = [f"**multiemova-dev, {cv['k']}-fold cross-validation** ({cv['n']} photos; folds `{rel_folds}`; every "
            f"choice made on the other folds alone{extra_note})", "", *HEADER]
    for b, t in cv["tables"].items():
        rows.append(row(f"{b} (held-out)" if b != "fused" else "**fused (held-out)**", t))
    rows += ["", "95% Wilson intervals of the fused held-out figures (how far a figure on this many photos may be "
             "from the truth): " + intervals(cv["tables"]["fused"]) + "."]
    rows += ["", "Calibration on the held-out folds (temperature fitted on the other folds):", "",
             "| branch | photos | NLL before | NLL after | ECE before | ECE after |", "|---|---:|---:|---:|---:|---:|"]
    for b, c in cv["calibration"].items():
        if b != "fused":
            rows.append(f"| {b} | {c['photos']} | {c['nll_before']:.3f} | {c['nll_after']:.3f} | "
                        f"{c['ece_before']:.3f} | {c['ece_after']:.3f} |")
    rows += ["", "Choices per outer fold: " + "; ".join(
        f"fold {f['fold']}: head c={f['head_c']}"
        f"{'' if extra is None else ', extra_weight=' + str(f['head_extra_weight'])}, {f['fusion']}, "
        f"weights {f['weights']}, T {f['temperature']}" for f in cv["folds"]), ""]
    if args.cv_only:
        print("\n".join(rows))
        atomic_write_text(args.out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
        return 0
    if args.write_bundle:
        fb_stats: dict = {}

        def recalibrate(stack) -> dict:
            """The fallback-only branches' temperatures, fitted where they speak (:func:`fallback_calibration`)."""
            cals, stats = fallback_calibration(args.shared, args.bundle, stack, args.out, key)
            stack.calibration.update(cals)
            fb_stats.update(stats)
            return {"fallback_calibration": {
                "how": "temperature of each fallback-only branch fitted on the sentiment validation photos it "
                       "labels (fewer than min_faces faces), checked on the test photos of the same kind",
                **stats}} if stats else {}

        chosen_on = {
            "data": "multiemova-dev (127 real group photos, group valence), ../shared/data/multiemova-dev",
            "folds": str(rel_folds),
            "method": "group head c; temperatures with or without per-class bias; fusion among each branch alone, "
                      f"the weighted average (grid step 0.1, weights by class-balanced {opts.weight_objective}) and "
                      "a fusion model; all by balanced accuracy in 5-fold CV, then fitted on all photos; the "
                      "whole-image branch is the fallback for photos where no weighted branch speaks"}
        notes = {
            **({} if extra is None else {"extra_head_data": extra_note.lstrip("; ")}),
            **({"excluded": f"{', '.join(excluded)} (weight 0, kept out of calibration and fusion: see EXCLUDED "
                            "in benchmarks/group_accuracy.py)"} if excluded else {}),
            "command": ".venv/bin/python benchmarks/group_accuracy.py --write-bundle"
                       + ("" if extra is None else f" --extra-head-data --extra-weights {args.extra_weights}"),
            **kept_choices(args.bundle)}
        stack = fit_bundle("group", data, args.bundle, args.bundle, trunk=TRUNK, opts=opts, extra=extra, cv=cv,
                           chosen_on=chosen_on, notes=notes, recalibrate=recalibrate, log=log).stack
        report["stack"] = {"head_c": stack.head_c, "fusion": stack.fusion, "weights": stack.weights,
                           "calibration": {b: c.to_dict() for b, c in stack.calibration.items()}, **stack.scores}
        rows.append(f"Bundle written: head c={stack.head_c}, fusion {stack.fusion}, weights "
                    f"{ {b: round(w, 2) for b, w in stack.weights.items()} }, temperatures "
                    f"{ {b: round(c.temperature, 2) for b, c in stack.calibration.items()} }; CV of the choices on all "
                    f"photos: head {stack.scores.get('head_cv')}, fusion {stack.scores.get('fusion_cv')}.")
        for b, st in fb_stats.items():
            rows.append(f"Fallback `{b}`: temperature {st['temperature_before']} (multiemova-dev, where it never "
                        f"speaks) -> {st['temperature']}, fitted on the {st['fitted_on']} sentiment validation photos "
                        f"with fewer than min_faces faces; on the {st['checked_on']} such test photos (accuracy "
                        f"{st['test_accuracy']:.1%}, unchanged) NLL {st['test_nll_before']:.3f} -> {st['test_nll']:.3f}, "
                        f"ECE {st['test_ece_before']:.3f} -> {st['test_ece']:.3f}.")
        rows.append("")
    rec = GroupEmotionRecognizer.from_bundle(args.bundle)
    sets = {"gaf-samples (8 Positive, 8 Negative; never tuned on)": gaf_sample_items(args.shared)}
    if not args.no_sentiment:
        sets["sentiment test photos (you2015 5-agree, sentibank603, emotion6; photo sentiment)"] = \
            sentiment_items(args.shared, "test")
    sets["multiemova-dev, the bundle fitted on all of it (in-sample, not a test)"] = dev_items
    for title, items in sets.items():
        tables, with_face = evaluate_bundle(rec, items)
        report[title] = tables
        rows += [f"**{title}** ({len(items)} photos), shipped bundle", "", *HEADER,
                 *[row(b, t) for b, t in tables.items()],
                 *[row(f"{b}, photos with a face", t) for b, t in with_face.items() if b in ("global", "fused")
                   and len(with_face) and t["n"] < len(items)]]
        if not args.no_peer and "in-sample" not in title:
            peer = fer_peer(items, args.threads)
            report[title]["fer 25.10.3 face average"] = peer
            rows.append(row("fer 25.10.3 face average (peer)", peer))
        rows.append("")
    if not args.no_peer:
        peer = fer_peer(dev_items, args.threads)
        report["fer multiemova-dev"] = peer
        rows += ["**multiemova-dev, peer** (nothing fitted)", "", *HEADER, row("fer 25.10.3 face average", peer), "",
                 "95% Wilson intervals: " + intervals(peer) + ".", ""]
    publish_result("Group accuracy on real group photos (multiemova-dev CV)", args.threads, load_start, [
        f"Bundle: `{args.bundle.relative_to(REPO) if args.bundle.is_relative_to(REPO) else args.bundle}`.",
        "Abstentions (no face for a face branch or for fer) count as wrong."], rows, not args.no_write)
    atomic_write_text(args.out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
