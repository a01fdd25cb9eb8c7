"""Test accuracy of a global (whole-image) model on each image-sentiment set, beside its baseline.

Evaluates one checkpoint or exported model on the held-out test photos of its own data config
(by default the committed splits of ``configs/splits/global``: twitter-you2015 5-agree test
photos, twitter-sentibank603, emotion6), centre crop + flip, and makes its table the current section
of that model and split in benchmarks/RESULTS.md, one row per set: photos, class balance, majority-class baseline, accuracy, mean class accuracy,
and the confusion matrix of all sets together. The data roots of the config are re-pointed at
``--shared`` so the numbers come from the same photos wherever the repo lives.

    .venv/bin/python benchmarks/global_accuracy.py --checkpoint src/groupmood/assets/global_efficientnet_lite0.safetensors
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

from _common import REPO, loadavg, publish_result, repo_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for eval JSON/PNG (default: runs/global_accuracy/<model file stem>)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from groupmood.config import data_options
    from groupmood.engine.evaluate import evaluate_checkpoint, load_model

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    _, meta = load_model(args.checkpoint)
    cfg = copy.deepcopy(meta["config"])
    cfg["train"]["progress"] = False
    data = cfg["data"] = data_options(cfg["data"])  # one flat view, whichever spelling the file's config used
    for spec in data.get("sources") or []:
        spec["root"] = str(args.shared / Path(spec["root"]).name)
    if data.get("root"):
        data["root"] = str(args.shared / Path(data["root"]).name)
    split_dir = data.get("split_dir")
    if split_dir and not Path(split_dir).is_absolute():
        data["split_dir"] = str(REPO / split_dir)
    out = args.out or REPO / "runs" / "global_accuracy" / f"{args.checkpoint.stem}_{args.split}"
    report = evaluate_checkpoint(args.checkpoint, cfg, args.split, out, "cpu", tta_flip=True, progress=False)

    classes = report["classes"]
    rows = ["| set | photos | balance (" + " / ".join(c[:3] for c in classes) + ") | majority-class baseline "
            "| accuracy | mean class accuracy |", "|---|---:|---|---:|---:|---:|"]
    for src, t in report.get("per_source", {}).items():
        balance = " / ".join(str(t["balance"][c]) for c in classes)
        rows.append(f"| {src} | {t['n']} | {balance} | {t['majority_baseline']:.1%} | **{t['accuracy']:.1%}** "
                    f"| {t['mean_class_accuracy']:.1%} |")
    support = [report["per_class"][c]["support"] for c in classes]
    rows.append(f"| all | {report['n']} | {' / '.join(map(str, support))} | {max(support) / report['n']:.1%} "
                f"| **{report['accuracy']:.1%}** | {report['mean_class_accuracy']:.1%} |")
    rows += ["", f"Confusion matrix, all sets (rows true {', '.join(classes)}; columns predicted): "
                 f"`{report['confusion']}`. Files: {', '.join(report['files'].values())}."]
    ckpt = repo_path(args.checkpoint)
    notes = [f"Model: `{ckpt}` ({cfg['model']['name']}); split `{args.split}` of its own data config "
             f"(split files `{split_dir}`), centre crop + flip averaged."]
    publish_result(f"Global model accuracy per set: `{ckpt}`, split {args.split}", args.threads, load_start, notes,
                   rows, not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
