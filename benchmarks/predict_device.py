"""Photos per second of ``groupmood predict``'s recognizer on one device (a GPU or the CPU), by batch size.

The default bundle and detector, built as ``groupmood predict --device DEVICE`` builds them
(``groupmood.cli.predict.build_recognizer``), run on the 228 benchmark photos of ``../shared/data``
(voc-faces, gaf-samples, wider-val-200, misc-group; the photos of ``benchmarks/detect.py``). Photos
are decoded before timing; models load and one batch warms up first; then every photo is predicted
in batches of each ``--batch-sizes`` entry, timed with the device synchronised. Reports photos/s,
ms per photo and faces found per batch size, and checks that every batch size gives every photo the
same label. Whole-process figures with ONNX Runtime and fer beside it are ``benchmarks/predict.py``'s.

    .venv/bin/python benchmarks/predict_device.py --device cuda --batch-sizes 1,8,32,64
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import REPO, loadavg, publish_result
from detect import photo_paths

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: %(default)s)")
    ap.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default: %(default)s)")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle YAML (default: the shipped one)")
    ap.add_argument("--backend", default="auto", help="torch, onnxruntime or auto (predict's default: ONNX "
                    "Runtime on a CPU where installed, PyTorch on CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=None, help="use only N photos, every folder represented (quick check)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    args = ap.parse_args(argv)

    import torch

    from groupmood.cli.predict import build_recognizer
    from groupmood.images import load_image

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    paths = [p for _, p in photo_paths(args.shared, args.limit)]
    images = [load_image(p) for p in paths]
    rec = build_recognizer(args.bundle, args.device, args.backend)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rec.predict(images[:max(sizes)])
    sync()
    rows, labels = [], {}
    for bs in sizes:
        start = time.perf_counter()
        results = [r for i in range(0, len(images), bs) for r in rec.predict(images[i:i + bs])]
        sync()
        seconds = time.perf_counter() - start
        labels[bs] = [r.label for r in results]
        faces = sum(len(r.faces) for r in results)
        rows.append(f"| {bs} | {len(images) / seconds:.1f} | {1000 * seconds / len(images):.1f} | {faces} |")
    same = all(v == labels[sizes[0]] for v in labels.values())
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    table = ["| batch size | photos/s | ms per photo | faces found |", "|---:|---:|---:|---:|", *rows, "",
             f"Same label for every photo at every batch size: {'yes' if same else 'NO'}."]
    notes = [f"Device: {device} ({args.device}); {len(images)} photos of {args.shared} (decoded before timing); "
             f"default bundle, weight-0 branches skipped; backend {args.backend}; one warm-up batch first."]
    publish_result(f"groupmood predict photos/s on {device}", args.threads, load_start, notes, table,
                   not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
