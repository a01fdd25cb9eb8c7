"""Issue 2 acceptance benchmark: groupmood's batched MTCNN against facenet-pytorch's MTCNN.

On the real photos of ``../shared/data`` (voc-faces, gaf-samples, wider-val-200, misc-group),
with the same weights and settings (thresholds 0.6/0.7/0.9, factor 0.709, per-photo minimum
face ``settings.min_face(h, w)``), in one run it measures:

* speed: seconds per photo, both detectors timed in one process, alternating on each photo
  (ours one photo per call, then facenet on the same photo), plus ours batched (8 photos of
  different sizes per call, interleaved with the per-photo timings of the same 8 photos);
* peak RSS of each detector, each in its own subprocess (hidden ``--worker`` mode);
* agreement: share of facenet's faces that one of ours matches with IoU >= 0.9;
* recall on the hand-drawn boxes of ``voc-faces/training.xml`` + ``testing.xml`` (IoU >= 0.5,
  greedy one-to-one), with a clearly labelled looser "covered" column;
* faces found per dataset folder.

It prints markdown tables and replaces the ``Face detection`` section of ``benchmarks/RESULTS.md``.

facenet-pytorch is not a project dependency: it is pip-installed (``--no-deps``, it pins
torch<2.3) into the git-ignored ``benchmarks/.peers`` when missing.

    .venv/bin/python benchmarks/detect.py            # all 228 photos, several minutes
    .venv/bin/python benchmarks/detect.py --limit 16 # quick run
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from _common import (REPO, loadavg, machine_line, photo_benchmark_parser, render_result_section,
                     run_memory_workers, write_result_section)

PEERS = REPO / "benchmarks" / ".peers"
PEER_PACKAGES = ["facenet-pytorch==2.6.0", "requests", "urllib3", "idna", "certifi", "charset-normalizer"]
FOLDERS = (("voc-faces", "*.jpg"), ("gaf-samples", "*"), ("wider-val-200", "*"), ("misc-group", "*"))
THRESHOLDS = (0.6, 0.7, 0.9)
FACTOR = 0.709
MIN_FACE_FRAC = 0.05
MATCH_IOU = 0.9
RECALL_IOU = 0.5
COVER_IOU = 0.3
BATCH = 8


# ---------------------------------------------------------------------------------------- setup

def ensure_facenet() -> None:
    """Put benchmarks/.peers on sys.path, pip-installing facenet-pytorch there when missing."""
    if not (PEERS / "facenet_pytorch" / "__init__.py").exists():
        print(f"installing facenet-pytorch into {PEERS} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                        str(PEERS), *PEER_PACKAGES], check=True)
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))


def photo_paths(shared: Path, limit: int | None) -> list[tuple[str, Path]]:
    """(folder, path) of every benchmark photo, folders in a fixed order, files sorted."""
    out = []
    for folder, pattern in FOLDERS:
        d = shared / folder
        if not d.is_dir():
            raise SystemExit(f"missing dataset folder {d}")
        out += [(folder, p) for p in sorted(d.glob(pattern))
                if p.is_file() and p.suffix.lower() not in (".xml", ".txt", ".md", ".json")]
    if limit:
        # keep every folder represented in a quick run
        per = {f: [x for x in out if x[0] == f] for f, _ in FOLDERS}
        picked: list[tuple[str, Path]] = []
        while len(picked) < min(limit, len(out)):
            for f, _ in FOLDERS:
                if per[f] and len(picked) < limit:
                    picked.append(per[f].pop(0))
        out = sorted(picked, key=lambda x: ([f for f, _ in FOLDERS].index(x[0]), x[1].name))
    return out


def our_detector(threads: int):
    import torch

    from groupmood.detect import FaceDetector
    torch.set_num_threads(threads)
    return FaceDetector.from_pretrained(auto_fetch=True, min_face_frac=MIN_FACE_FRAC,
                                        thresholds=THRESHOLDS, factor=FACTOR)


def facenet_detector(threads: int):
    import torch
    ensure_facenet()
    from facenet_pytorch import MTCNN
    torch.set_num_threads(threads)
    return MTCNN(keep_all=True, thresholds=list(THRESHOLDS), factor=FACTOR, select_largest=False,
                 post_process=False, device="cpu")


def min_face(h: int, w: int) -> float:
    from groupmood.detect import CascadeSettings
    return CascadeSettings(min_face_frac=MIN_FACE_FRAC, thresholds=THRESHOLDS, factor=FACTOR).min_face(h, w)


def run_ours(det, images):
    """Boxes (N, 5: x1 y1 x2 y2 score) per image from one detect() call."""
    import numpy as np
    out = det.detect(images)
    return [np.array([[*f.box, f.score] for f in faces], np.float32).reshape(-1, 5) for faces in out]


def run_facenet(mtcnn, image):
    """Boxes (N, 5) of one image; min_face_size set for this photo as ours computes it."""
    import numpy as np
    mtcnn.min_face_size = min_face(*image.shape[:2])
    boxes, probs, _points = mtcnn.detect(image, landmarks=True)
    if boxes is None or len(boxes) == 0:
        return np.zeros((0, 5), np.float32)
    return np.concatenate([np.asarray(boxes, np.float32).reshape(-1, 4),
                           np.asarray(probs, np.float32).reshape(-1, 1)], axis=1)


def same_weights() -> str:
    """Compare facenet-pytorch's packaged MTCNN weights with the ones groupmood pins."""
    from groupmood import weights
    data = PEERS / "facenet_pytorch" / "data"
    rows = []
    for name in ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"):
        s = weights.spec(name)
        rows.append(weights.sha256_file(data / s.filename) == s.sha256)
    return "identical (sha256)" if all(rows) else f"DIFFERENT: {rows}"


# ---------------------------------------------------------------------------------------- worker

def worker(kind: str, shared: Path, threads: int, limit: int | None) -> int:
    """Run one detector over every photo in this process; print peak RSS as JSON."""
    import torch

    from groupmood.images import load_image

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    paths = [p for _, p in photo_paths(shared, limit)]
    det = facenet_detector(threads) if kind == "facenet" else our_detector(threads)
    after_load = rss_mb()
    faces = 0
    with torch.inference_mode():
        if kind == "ours-batch":
            for i in range(0, len(paths), BATCH):
                faces += sum(len(b) for b in run_ours(det, [load_image(p) for p in paths[i:i + BATCH]]))
        else:
            for p in paths:
                img = load_image(p)
                faces += len(run_facenet(det, img) if kind == "facenet" else run_ours(det, [img])[0])
    hwm = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = float(line.split()[1]) / 1024.0
    except OSError:
        pass
    print(json.dumps({"kind": kind, "after_load_mb": after_load, "peak_mb": rss_mb(), "vmhwm_mb": hwm,
                      "faces": faces}))
    return 0


def measure_memory(shared: Path, threads: int, limit: int | None) -> dict:
    return run_memory_workers(__file__, ("ours", "ours-batch", "facenet"), shared, threads, limit)


# ---------------------------------------------------------------------------------------- metrics

def iou(a, b):
    """IoU matrix (len(a), len(b)) of x1 y1 x2 y2 boxes (numpy in, numpy out)."""
    import numpy as np
    import torch
    from torchvision.ops import box_iou
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    return box_iou(torch.as_tensor(np.asarray(a)[:, :4], dtype=torch.float32),
                   torch.as_tensor(np.asarray(b)[:, :4], dtype=torch.float32)).numpy()


def greedy_matches(m, thr: float) -> int:
    """Greedy one-to-one matching on an IoU matrix: number of pairs with IoU >= thr."""
    import numpy as np
    m = np.array(m, dtype=np.float64, copy=True)
    n = 0
    while m.size and m.max() >= thr:
        i, j = np.unravel_index(int(m.argmax()), m.shape)
        n += 1
        m[i, :] = -1
        m[:, j] = -1
    return n


def covered(gt, dets) -> int:
    """Ground-truth boxes with some detection at IoU >= 0.3 or containing the box centre."""
    import numpy as np
    if len(gt) == 0:
        return 0
    if len(dets) == 0:
        return 0
    m = iou(gt, dets)
    cx = (gt[:, 0] + gt[:, 2]) / 2
    cy = (gt[:, 1] + gt[:, 3]) / 2
    d = np.asarray(dets)
    inside = ((cx[:, None] >= d[None, :, 0]) & (cx[:, None] <= d[None, :, 2])
              & (cy[:, None] >= d[None, :, 1]) & (cy[:, None] <= d[None, :, 3]))
    return int(((m >= COVER_IOU) | inside).any(axis=1).sum())


def read_imglab(xml_path: Path) -> dict[str, "object"]:
    """{file name: (K, 4) x1 y1 x2 y2} from an imglab/dlib XML (boxes with ignore='1' dropped)."""
    import numpy as np
    out = {}
    for im in ET.parse(xml_path).getroot().iter("image"):
        boxes = []
        for b in im.iter("box"):
            if b.get("ignore", "0") in ("1", "true"):
                continue
            x, y, w, h = (float(b.get(k)) for k in ("left", "top", "width", "height"))
            boxes.append([x, y, x + w, y + h])
        out[Path(im.get("file")).name] = np.array(boxes, np.float32).reshape(-1, 4)
    return out


def summary(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.median(xs)) if xs else (float("nan"), float("nan"))


# ---------------------------------------------------------------------------------------- report

def fmt(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}f}"


# ---------------------------------------------------------------------------------------- main

def benchmark(args) -> int:
    shared = args.shared.resolve()
    command = shlex.join([os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(REPO))
                          else sys.executable, os.path.relpath(Path(__file__).resolve(), Path.cwd()),
                          *args.argv])
    load_start = loadavg()
    started = _dt.datetime.now().astimezone()
    ensure_facenet()
    # Peak RSS first, while this process holds only the standard library: on Linux a child's
    # ru_maxrss starts from the parent's RSS at fork, so a parent holding torch and the photos
    # would inflate every worker's figure.
    memory = None if args.no_memory else measure_memory(shared, args.threads, args.limit)

    import numpy as np
    import torch

    from groupmood.images import load_image
    torch.set_num_threads(args.threads)

    photos = photo_paths(shared, args.limit)
    print(f"{len(photos)} photos from {shared}; load average {load_start}", flush=True)
    images = [load_image(p) for _, p in photos]
    names = [f"{f}/{p.name}" for f, p in photos]
    ours = our_detector(args.threads)
    theirs = facenet_detector(args.threads)
    weights_note = same_weights()
    print(f"MTCNN weights ours vs facenet-pytorch: {weights_note}", flush=True)

    t_one, t_fn, t_batch, batch_sizes = [], [], [], []
    res_ours: list = [None] * len(images)
    res_batch: list = [None] * len(images)
    res_fn: list = [None] * len(images)
    clock = time.perf_counter
    with torch.inference_mode():
        run_ours(ours, [images[0]])  # warm-up, one photo each
        run_facenet(theirs, images[0])
        for start in range(0, len(images), BATCH):
            idx = list(range(start, min(start + BATCH, len(images))))
            t0 = clock()
            out = run_ours(ours, [images[i] for i in idx])
            t_batch.append(clock() - t0)
            batch_sizes.append(len(idx))
            for i, r in zip(idx, out):
                res_batch[i] = r
            for i in idx:  # alternate on each photo: ours, then theirs
                t0 = clock()
                res_ours[i] = run_ours(ours, [images[i]])[0]
                t_one.append(clock() - t0)
                t0 = clock()
                res_fn[i] = run_facenet(theirs, images[i])
                t_fn.append(clock() - t0)
            print(f"  {idx[-1] + 1}/{len(images)} photos  ours {sum(t_one):.1f}s  batched {sum(t_batch):.1f}s  "
                  f"facenet {sum(t_fn):.1f}s", flush=True)
    load_end = loadavg()

    # ---- speed
    one_mean, one_med = summary(t_one)
    fn_mean, fn_med = summary(t_fn)
    per_batch = [t / n for t, n in zip(t_batch, batch_sizes)]
    b_mean = sum(t_batch) / max(1, sum(batch_sizes))
    b_med = statistics.median(per_batch) if per_batch else float("nan")

    # ---- batched vs one-per-call consistency (ours)
    batch_diff = 0
    batch_maxdev = 0.0
    for a, b in zip(res_ours, res_batch):
        if len(a) != len(b):
            batch_diff += 1
        elif len(a):
            batch_maxdev = max(batch_maxdev, float(np.abs(a - b).max()))

    # ---- agreement
    matched_fn, total_fn, matched_ours, total_ours = 0, 0, 0, 0
    unmatched = []
    for name, a, b in zip(names, res_ours, res_fn):
        m = iou(b, a)  # (theirs, ours)
        best_fn = m.max(axis=1) if m.shape[1] else np.zeros(len(b))
        best_ours = m.max(axis=0) if m.shape[0] else np.zeros(len(a))
        total_fn += len(b)
        total_ours += len(a)
        matched_fn += int((best_fn >= MATCH_IOU).sum())
        matched_ours += int((best_ours >= MATCH_IOU).sum())
        miss_fn = [(b[k], float(best_fn[k])) for k in range(len(b)) if best_fn[k] < MATCH_IOU]
        miss_ours = [(a[k], float(best_ours[k])) for k in range(len(a)) if best_ours[k] < MATCH_IOU]
        if miss_fn or miss_ours:
            unmatched.append((name, miss_fn, miss_ours))
    pct_fn = 100.0 * matched_fn / total_fn if total_fn else float("nan")
    pct_ours = 100.0 * matched_ours / total_ours if total_ours else float("nan")

    # ---- recall on voc-faces annotations
    gt: dict = {}
    for xml in ("training.xml", "testing.xml"):
        p = shared / "voc-faces" / xml
        if p.exists():
            gt.update(read_imglab(p))
    by_name = {n.split("/", 1)[1]: i for i, n in enumerate(names) if n.startswith("voc-faces/")}
    recall = {}
    for label, res in (("ours", res_ours), ("facenet", res_fn)):
        n_gt = hit = cov = 0
        for fname, boxes in gt.items():
            if fname not in by_name:
                continue
            dets = res[by_name[fname]]
            n_gt += len(boxes)
            hit += greedy_matches(iou(boxes, dets), RECALL_IOU)
            cov += covered(boxes, dets[:, :4] if len(dets) else dets)
        recall[label] = (n_gt, hit, cov)

    # ---- per folder
    per_folder = []
    for folder, _ in FOLDERS:
        idx = [i for i, n in enumerate(names) if n.startswith(folder + "/")]
        per_folder.append((folder, len(idx), sum(len(res_ours[i]) for i in idx), sum(len(res_fn[i]) for i in idx)))

    # ---- tables
    lines = []
    lines.append("| Measure | groupmood MTCNN | facenet-pytorch 2.6.0 MTCNN | Target |")
    lines.append("|---|---|---|---|")
    lines.append(f"| s/photo, one photo per call (mean / median) | {fmt(one_mean)} / {fmt(one_med)} | "
                 f"{fmt(fn_mean)} / {fmt(fn_med)} | |")
    lines.append(f"| s/photo, batches of {BATCH} photos of different sizes (mean / median) | "
                 f"{fmt(b_mean)} / {fmt(b_med)} | (cannot batch different sizes) | |")
    lines.append(f"| Speed-up vs facenet, one photo per call (mean) | {fn_mean / one_mean:.2f}x | 1x | >= 1.5x |")
    lines.append(f"| Speed-up vs facenet, batched (mean) | {fn_mean / b_mean:.2f}x | 1x | >= 1.5x |")
    if memory:
        lines.append(f"| Peak RSS over all photos, one per call (MB; after model load) | "
                     f"{memory['ours']['peak_mb']:.0f} ({memory['ours']['after_load_mb']:.0f}) | "
                     f"{memory['facenet']['peak_mb']:.0f} ({memory['facenet']['after_load_mb']:.0f}) | |")
        lines.append(f"| Peak RSS, batches of {BATCH} (MB) | {memory['ours-batch']['peak_mb']:.0f} | | |")
    lines.append(f"| Faces found (all photos) | {total_ours} | {total_fn} | |")
    lines.append(f"| Their faces matched by ours at IoU >= {MATCH_IOU} | {matched_fn}/{total_fn} = {pct_fn:.1f}% | "
                 f"| >= 98% |")
    lines.append(f"| Our faces matched by theirs at IoU >= {MATCH_IOU} | {matched_ours}/{total_ours} = "
                 f"{pct_ours:.1f}% | | |")
    no, ho, co = recall["ours"]
    nf, hf, cf = recall["facenet"]
    lines.append(f"| voc-faces recall, IoU >= {RECALL_IOU} one-to-one (headline) | {ho}/{no} = {ho / max(no, 1):.3f} | "
                 f"{hf}/{nf} = {hf / max(nf, 1):.3f} | >= 0.95 |")
    lines.append(f"| voc-faces 'covered' (extra, looser: a detection with IoU >= {COVER_IOU} or containing the "
                 f"box centre; dlib boxes are tighter than MTCNN's) | {co}/{no} = {co / max(no, 1):.3f} | "
                 f"{cf}/{nf} = {cf / max(nf, 1):.3f} | |")
    lines.append(f"| Ours batched vs one per call | {batch_diff} photos with a different face count; "
                 f"max box/score difference {batch_maxdev:.2g} | | |")
    table = "\n".join(lines)

    flines = ["| Folder | Photos | Faces (groupmood) | Faces (facenet-pytorch) |", "|---|---|---|---|"]
    flines += [f"| {f} | {n} | {a} | {b} |" for f, n, a, b in per_folder]
    flines.append(f"| all | {len(names)} | {total_ours} | {total_fn} |")
    ftable = "\n".join(flines)

    print()
    print(table)
    print()
    print(ftable)
    print()
    print(f"photos with unmatched faces (IoU < {MATCH_IOU}): {len(unmatched)}")
    for name, miss_fn, miss_ours in unmatched:
        for box, best in miss_fn:
            print(f"  {name}: facenet face {np.round(box[:4], 1).tolist()} p={box[4]:.3f} best IoU with ours {best:.3f}")
        for box, best in miss_ours:
            print(f"  {name}: our face     {np.round(box[:4], 1).tolist()} p={box[4]:.3f} best IoU with theirs {best:.3f}")
    if memory:
        print("peak RSS check (ru_maxrss vs /proc VmHWM, MB): " + ", ".join(
            f"{k} {v['peak_mb']:.0f} vs {v['vmhwm_mb']:.0f}" for k, v in memory.items()))
    print(f"load average: start {load_start}, end {load_end}")

    body = "\n".join([
        f"Load average (1/5/15 min) at start {load_start}, at end {load_end} (shared machine). Command run "
        "from the repo root.",
        "",
        f"{len(names)} photos of `../shared/data` ({', '.join(f'{f} {n}' for f, n, _, _ in per_folder)}). "
        f"Both detectors: thresholds {'/'.join(map(str, THRESHOLDS))}, factor {FACTOR}, per-photo minimum face "
        f"max({MIN_FACE_FRAC} * min(h, w), 12) px, CPU, `torch.inference_mode`; MTCNN weights {weights_note}. "
        f"Timed in one process, alternating per photo (ours then facenet on the same photo) after one warm-up "
        f"photo each; the batched call on 8 photos precedes their per-photo timings. Peak RSS: each detector "
        f"alone in a subprocess over all photos, photos loaded one at a time (`ru_maxrss`; in parentheses "
        f"after loading the model).",
        "",
        table,
        "",
        ftable,
        "",
        f"Photos with a face unmatched at IoU >= {MATCH_IOU} (either way): {len(unmatched)}"
        + (f" ({', '.join(n for n, _, _ in unmatched)})" if unmatched else "") + ".",
    ])
    when, machine = started.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine_line(args.threads)
    if args.no_write:
        print("\n" + render_result_section("Face detection", body, command, machine, when))
    else:
        write_result_section("Face detection", body, command, machine, args.results, when)
        print(f"section 'Face detection' of {args.results} replaced")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = photo_benchmark_parser(__doc__, "torch.set_num_threads (default 2)", "skip the peak-RSS subprocesses")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md",
                    help="results file whose Face detection section is replaced (default: benchmarks/RESULTS.md)")
    ap.add_argument("--worker", choices=("ours", "ours-batch", "facenet"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.worker:
        return worker(args.worker, args.shared, args.threads, args.limit)
    return benchmark(args)


if __name__ == "__main__":
    raise SystemExit(main())
