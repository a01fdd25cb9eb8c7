"""How many faces a photo needs before the face branches vote: the check behind the bundle's ``min_faces``.

The bundle's models, calibration and weights are kept; only the rule changes. For each ``k`` in
``--ks`` the face branches vote on a photo when MTCNN finds at least ``k`` faces (otherwise the
whole-image branch alone labels it), on validation photos only: the image-sentiment sets'
validation split (``configs/splits/global``; photo sentiment, no Neutral in the Twitter sets) and
multiemova-dev (in-sample for the fitted parts; it shows whether a rule would change its figures).
Test photos are never read here. Prints a table and replaces its section of RESULTS.md.

    .venv/bin/python benchmarks/min_faces.py
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import REPO, loadavg, publish_result
from group_accuracy import BUNDLE, labelled_results, multiemova_items, sentiment_items


def evidence(rec, items: list[tuple[Path, int, str]]) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Calibrated branch probabilities, spoke flags, face counts and labels of labelled photos."""
    probs: dict[str, list] = {}
    spoke: dict[str, list] = {}
    faces, ys = [], []
    for y, res in labelled_results(rec, items):
        ys.append(y)
        faces.append(len(res.faces))
        for b, r in res.branches.items():
            probs.setdefault(b, []).append(r.probs)
            spoke.setdefault(b, []).append(r.spoke)
    return ({b: np.array(v) for b, v in probs.items()}, {b: np.array(v) for b, v in spoke.items()},
            np.array(faces), np.array(ys))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--ks", default="1,2,3", help="face counts to try (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    args = ap.parse_args(argv)
    import torch

    from groupmood.fusion import fuse_rows
    from groupmood.pipeline import GroupEmotionRecognizer

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    rec = GroupEmotionRecognizer.from_bundle(args.bundle)
    rec.min_faces = 1  # every face branch reports whether it could vote; the rule is applied below
    ks = [int(k) for k in args.ks.split(",")]
    table = ["| photos | n | one face | two or more | no face | " + " | ".join(f"vote from {k} faces" for k in ks)
             + " |", "|---|---:|---:|---:|---:|" + "---:|" * len(ks)]
    for title, items in (("image-sentiment validation split", sentiment_items(args.shared, "val")),
                         ("multiemova-dev (fitted on: in-sample)", multiemova_items(args.shared))):
        probs, spoke, nf, y = evidence(rec, items)
        cells = []
        for k in ks:
            voting = {b: s & (nf >= k) if rec.branches[b].is_face else s for b, s in spoke.items()}
            pred = fuse_rows(probs, rec.weights, voting)[1]
            cells.append(f"{(pred == y).mean():.3f}")
        table.append(f"| {title} | {len(y)} | {(nf == 1).sum()} | {(nf >= 2).sum()} | {(nf == 0).sum()} | "
                     + " | ".join(cells) + " |")
    notes = [f"Bundle: `{args.bundle.relative_to(REPO) if args.bundle.is_relative_to(REPO) else args.bundle}` "
             "(its calibration and weights; only the face count at which the face branches vote changes). "
             "Accuracy of the fused label."]
    publish_result("Face count at which the face branches vote (validation photos)", args.threads, load_start,
                   notes, table, not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
