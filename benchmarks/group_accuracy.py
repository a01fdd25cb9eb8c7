"""Group-level accuracy of a bundle on real labelled photos, and the search of its fusion weights.

1. The image-sentiment sets of ``configs/base_global.yaml`` (twitter-you2015, twitter-sentibank603,
   emotion6), each with the committed split of ``configs/splits/global``: the validation photos
   choose the fusion weights (grid over the simplex, on the photos where MTCNN finds a face: on
   the others only the global branch speaks and the weights change nothing), the test photos
   report them. These labels are the photo's sentiment as annotators saw it, not a group's
   emotion; the Twitter sets have no Neutral photos.
2. ``gaf-samples`` (8 Positive, 8 Negative GAF 3.0 photos): looked at, never tuned on.

With ``--write-bundle`` the chosen weights and what they were chosen on go into the bundle YAML.
Appends tables (per branch and fused; all faces vs the 3 largest) to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/group_accuracy.py --write-bundle
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import yaml

from _common import REPO, loadavg, publish, section


def sentiment_items(shared: Path, split: str) -> list[tuple[Path, int, str]]:
    """(path, class, name) of one split of the global recipe's sources, named source/relative path."""
    from groupmood.config import load_config
    from groupmood.data.faces import split_indices
    from groupmood.data.groups import read_source, source_specs
    from groupmood.labels import GROUP_CLASSES

    data = load_config(REPO / "configs" / "base_global.yaml")["data"]
    items = []
    for spec in source_specs(data):
        spec["root"] = str(shared / Path(spec["root"]).name)
        table = read_source(spec)
        split_file = REPO / data["split_dir"] / f"{spec['name']}.json"
        if not split_file.is_file():
            raise SystemExit(f"{split_file} is missing: train a global recipe first (it writes the split)")
        for i in split_indices(split_file, table.names, spec["name"], "retrain the global recipe").get(split, []):
            items.append((Path(table.paths[i]), GROUP_CLASSES.index(str(table.labels[i])),
                          f"{spec['name']}/{table.names[i]}"))
    return items


def gaf_sample_items(shared: Path) -> list[tuple[Path, int, str]]:
    """The 16 gaf-samples photos, labelled by their name (pos_ / neg_)."""
    from groupmood.labels import GROUP_CLASSES

    out = []
    for p in sorted((shared / "gaf-samples").iterdir()):
        label = {"pos": "Positive", "neg": "Negative"}.get(p.name.split("_")[0])
        if label:
            out.append((p, GROUP_CLASSES.index(label), p.name))
    return out


def faces_per_photo(out: Path) -> dict[str, int]:
    with open(out / "scores" / "faces.csv", newline="", encoding="utf-8") as f:
        return {r["name"]: int(r["faces"]) for r in csv.DictReader(f)}


def search(out: Path, branches: list[str], pooling: dict[str, str], step: float) -> dict:
    """Weight search on the evaluated photos where at least one face was found."""
    from groupmood.fusion import align_tables, match_labels, read_labels, read_scores, search_weights

    tables = {}
    for b in branches:
        stem = f"{b}_{pooling[b]}" if b in pooling else b
        tables[b] = read_scores(out / "scores" / f"{stem}.txt")
    names, scores, spoke = align_tables(tables)
    faces = faces_per_photo(out)
    keep = np.array([faces.get(n, 0) > 0 for n in names])
    labels = match_labels(names, read_labels(out / "scores" / "labels.csv"))
    res = search_weights({b: s[keep] for b, s in scores.items()}, labels[keep], step=step,
                         spoke={b: s[keep] for b, s in spoke.items()})
    return {"weights": res.best_weights, "accuracy": res.best_accuracy, "n": int(keep.sum()),
            "trials": len(res.trials)}


def subset_line(out: Path, branches: list[str], pooling: dict[str, str], weights: dict[str, float]) -> str:
    """Accuracy of each branch and of the fusion on the photos with two or more detected faces."""
    from groupmood.fusion import align_tables, fuse_rows, match_labels, read_labels, read_scores

    tables = {b: read_scores(out / "scores" / (f"{b}_{pooling[b]}.txt" if b in pooling else f"{b}.txt"))
              for b in branches}
    names, scores, spoke = align_tables(tables)
    faces = faces_per_photo(out)
    keep = np.array([faces.get(n, 0) >= 2 for n in names])
    if not keep.any():
        return "No test photo has two or more detected faces."
    y = match_labels(names, read_labels(out / "scores" / "labels.csv"))[keep]
    parts = []
    for b in branches:
        ok = spoke[b][keep]
        parts.append(f"{b} {float(((scores[b][keep].argmax(1) == y) & ok).mean()):.3f}")
    _, fused = fuse_rows({b: s[keep] for b, s in scores.items()}, weights, {b: s[keep] for b, s in spoke.items()})
    parts.append(f"fused {float((fused == y).mean()):.3f}")
    return (f"Sentiment test photos with two or more detected faces ({int(keep.sum())} of {len(names)}): "
            f"accuracy {', '.join(parts)}.")


def table_rows(title: str, report: dict) -> list[str]:
    rows = [f"**{title}** ({report['n']} photos)", "",
            "| pooling | branch | accuracy (abstain = wrong) | Negative | Neutral | Positive | photos where it spoke "
            "| accuracy where it spoke |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for variant in ("all", "top3"):
        for name, t in report["tables"][variant]["models"].items():
            per = t.get("per_class", {})
            cells = [f"{per[c]['accuracy']:.3f} (n={per[c]['support']})" if per.get(c, {}).get("support") else "-"
                     for c in ("Negative", "Neutral", "Positive")]
            rows.append(f"| {variant} | {name} | {t['accuracy']:.3f} | {' | '.join(cells)} | "
                        f"{round(t['coverage'] * t['n'])} | {t['accuracy_spoke']:.3f} |")
    return rows + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "src" / "groupmood" / "assets" / "bundle.yaml")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "group_accuracy")
    ap.add_argument("--step", type=float, default=0.1, help="grid step of the weight search")
    ap.add_argument("--write-bundle", action="store_true", help="store the chosen weights in the bundle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from groupmood.engine.groups import evaluate_groups
    from groupmood.io import atomic_write_text
    from groupmood.pipeline import GroupEmotionRecognizer

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    rec = GroupEmotionRecognizer.from_bundle(args.bundle)
    branches = list(rec.branches)
    pooling = {n: "all" if b.top_k is None else f"top{b.top_k}" for n, b in rec.branches.items() if b.is_face}
    notes = [f"Bundle: `{args.bundle.relative_to(REPO) if args.bundle.is_relative_to(REPO) else args.bundle}`, "
             f"branches {', '.join(branches)}, pooling {pooling}."]
    rows: list[str] = []

    val = evaluate_groups(rec, sentiment_items(args.shared, "val"), args.out / "sentiment_val", progress=False)
    found = search(args.out / "sentiment_val", branches, pooling, args.step)
    notes.append(f"Fusion weights searched on the sentiment validation photos with a face ({found['n']} photos, "
                 f"{found['trials']} weight sets, step {args.step}): best {found['weights']} at "
                 f"{found['accuracy']:.3f}; bundle weights before: {dict(rec.weights)}.")
    if args.write_bundle:
        doc = yaml.safe_load(args.bundle.read_text())
        doc["weights"] = {k: round(float(v), 4) for k, v in found["weights"].items()}
        doc["chosen_on"] = {
            "data": "validation split (configs/splits/global) of twitter-you2015, twitter-sentibank603 and "
                    "emotion6, photos where MTCNN finds at least one face",
            "photos": found["n"], "method": f"grid over the simplex, step {args.step}, {found['trials']} sets",
            "accuracy": round(float(found["accuracy"]), 4),
            "command": ".venv/bin/python benchmarks/group_accuracy.py --write-bundle"}
        atomic_write_text(args.bundle, yaml.safe_dump(doc, sort_keys=False))
        rec = GroupEmotionRecognizer.from_bundle(args.bundle)
    rows += table_rows("Sentiment validation photos (weights chosen here)", val)

    test = evaluate_groups(rec, sentiment_items(args.shared, "test"), args.out / "sentiment_test", progress=False)
    rows += table_rows("Sentiment test photos (you2015 test: 5-agree only)", test)
    rows += [subset_line(args.out / "sentiment_test", branches, pooling, dict(rec.weights))]
    gaf = evaluate_groups(rec, gaf_sample_items(args.shared), args.out / "gaf_samples", progress=False)
    rows += [""] + table_rows("gaf-samples (8 Positive, 8 Negative; no Neutral)", gaf)
    text = section("Group accuracy of the bundle", args.threads, load_start, notes + [
        "Labels of the sentiment sets are photo sentiment, not group emotion; the Twitter sets have no Neutral. "
        "'photos where it spoke': face branches abstain on photos without a face."], rows)
    publish(text, not args.no_write)
    atomic_write_text(args.out / "summary.json", json.dumps({"search": found}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
