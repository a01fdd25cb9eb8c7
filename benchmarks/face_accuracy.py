"""Accuracy of a face-expression model on the real labelled faces of ../shared/data.

For one checkpoint or exported model it evaluates, each on the data named in the row:
FERPlus FER2013Test (majority labels, 8-class and 3-class valence), and as cross-dataset tests
CK+48 (all 981 images, 7 classes), JAFFE (68 images) and lfw-expressions (the held-out persons of
the model's own run when it was trained there, else all 3,126 photos), each face cut the way the
model's branch sees it at inference (non-aligned: the 48x48 file or MTCNN's square crop;
aligned: MTCNN + 5-point alignment). Its table becomes the current section of that model, those
sets and that flip setting in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/face_accuracy.py --checkpoint src/groupmood/assets/face_nonaligned.safetensors
    .venv/bin/python benchmarks/face_accuracy.py --checkpoint runs/lfw_sphereface_compact/best.pt --sets lfw ckplus jaffe
    .venv/bin/python benchmarks/face_accuracy.py --checkpoint src/groupmood/assets/face_aligned.safetensors \
        --sets lfw ckplus jaffe --lfw-split configs/splits/lfw_expressions.json
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

from _common import REPO, loadavg, publish_result, repo_path

SETS = ("ferplus", "ckplus", "jaffe", "lfw")


def data_section(name: str, shared: Path, family: str, own: dict,
                 lfw_split: Path | None = None) -> tuple[dict, str, str]:
    """(config data section, split, description) for one evaluation set.

    lfw-expressions' held-out persons are those of the model's own split file: ``lfw_split``, else the
    config's ``split_file``, else ``split.json`` beside the checkpoint (an error when none is there).
    """
    aligned = family == "face_aligned"
    faces = "mtcnn" if aligned else "file"
    if name == "ferplus":
        return ({"kind": "ferplus", "root": str(shared / "ferplus"), "mode": "majority"}, "test",
                "FERPlus FER2013Test, majority labels")
    if name == "ckplus":
        return ({"kind": "folder", "root": str(shared / "ckplus48"), "faces": faces, "crop": None}, "all",
                "CK+48, all images (cross-dataset)")
    if name == "jaffe":
        return ({"kind": "named", "root": str(shared / "jaffe-subset"), "faces": "mtcnn", "crop": None,
                 "label_regex": r"^[A-Za-z]+\.([A-Za-z]{2})"}, "all", "JAFFE subset, all 68 (cross-dataset)")
    trained_here = own.get("kind") == "legend" and "lfw-expressions" in str(own.get("root"))
    section = {"kind": "legend", "root": str(shared / "lfw-expressions"), "faces": "mtcnn", "crop": None,
               "split": own.get("split"), "split_seed": own.get("split_seed", 0),
               "split_file": lfw_split or own.get("split_file")}
    if trained_here:
        return section, "test", "lfw-expressions, held-out persons of the model's own split"
    return section, "all", "lfw-expressions, all photos (cross-dataset)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    ap.add_argument("--tta", action="store_true", help="average with the horizontal flip")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for eval JSON/PNGs (default: runs/face_accuracy/<model file name>)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--lfw-split", type=Path, default=None,
                    help="the split file the model was trained with, for lfw-expressions' held-out persons "
                         "(default: its config's data.split_file, else split.json beside the checkpoint; the "
                         "shipped aligned model's: configs/splits/lfw_expressions.json)")
    args = ap.parse_args(argv)
    import torch

    from groupmood.engine.evaluate import evaluate_checkpoint, load_model
    from groupmood.labels import GROUP_CLASSES
    from groupmood.models import model_info

    torch.set_num_threads(args.threads)
    _, meta = load_model(args.checkpoint)
    cfg0 = meta["config"]
    family = model_info(cfg0["model"]["name"]).family
    group_head = tuple(meta["classes"]) == GROUP_CLASSES
    rows, load_start = [], loadavg()
    for name in args.sets:
        data, split, what = data_section(name, args.shared, family, cfg0["data"], args.lfw_split)
        cfg = copy.deepcopy(cfg0)
        cfg["data"].update(data)
        if group_head:  # a group-class head: the faces' labels read as valence, its accuracy is the valence one
            cfg["data"]["target"] = "valence"
        out = (args.out or REPO / "runs" / "face_accuracy" / args.checkpoint.stem) / name
        rep = evaluate_checkpoint(args.checkpoint, cfg, split, out, tta_flip=args.tta, progress=False)
        val = rep.get("valence", {"accuracy": rep["accuracy"]} if group_head else {})
        rows.append((what, rep["n"] if "n" in rep else sum(map(sum, rep["confusion"])), rep["accuracy"],
                     rep["mean_class_accuracy"], val.get("accuracy", float("nan"))))
        print(f"{what}: n={rows[-1][1]} acc={rep['accuracy']:.4f} valence={rows[-1][4]:.4f}", flush=True)
    table = ["| data (split) | faces | accuracy (its classes) | mean class accuracy | 3-class valence accuracy |",
             "|---|---:|---:|---:|---:|"]
    table += [f"| {w} | {n} | {a:.4f} | {m:.4f} | {v:.4f} |" for w, n, a, m, v in rows]
    name = (f"Face expression accuracy: `{repo_path(args.checkpoint)}` on {' '.join(args.sets)}"
            f"{' with flip' if args.tta else ''}")
    # a converted third-party net (groupmood.models.pretrained) carries the default config: no data root
    origin = (f"trained with `data.kind={cfg0['data'].get('kind')}`, `root={cfg0['data'].get('root')}`, target "
              f"{cfg0['data'].get('target')}" if cfg0["data"].get("root") else
              "not trained by groupmood: third-party weights converted to a groupmood file; its card says where from")
    publish_result(name, args.threads, load_start, [
        f"Model: `{args.checkpoint}`, {cfg0['model']['name']} ({origin})",
        f"Test-time flip: {'yes' if args.tta else 'no'}. Accuracy is over the model's expression classes; the "
        "data may lack some (CK+ has no neutral, JAFFE no contempt). Valence maps happiness to Positive, "
        "neutral to Neutral, surprise to Positive, the rest to Negative."
        + (" This model has a group-class head: each face's label is read as valence (`data.target: valence`: "
           "majority over the three valence classes, so the kept faces differ from the 8-class test's) and "
           "its accuracy is the valence accuracy." if group_head else "")], table, not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
