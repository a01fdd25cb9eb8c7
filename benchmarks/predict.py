"""Acceptance benchmark of ``groupmood predict`` against the ``fer`` package's ``FER(mtcnn=True)``.

On the photos of ``benchmarks/detect.py`` (``../shared/data``: voc-faces, gaf-samples, wider-val-200,
misc-group; 228 in all), in one run it measures, per photo set and overall:

* seconds per photo (mean, median) of groupmood's default bundle called as ``groupmood predict``
  calls it (the CLI's own ``build_detector`` / ``load_recognizer`` with the command's default
  options, ``GroupEmotionRecognizer.predict``), one photo per call and in batches of the
  command's ``--batch-size`` (8), against ``fer.FER(mtcnn=True).detect_emotions`` with fer's
  defaults on the same photo (BGR array from ``cv2.imread``, as fer's README does);
* faces found by each, milliseconds per face found, speed-up = fer / groupmood;
* peak RSS of each alone, each in its own subprocess (``ru_maxrss``);
* model load time of each, reported apart from the per-photo timings (models load once first).

Photos are decoded before timing (groupmood's ``load_image``, fer's ``cv2.imread``); only the
calls are timed. fer runs in a long-lived subprocess (hidden ``--worker fer`` mode) that times each
call itself; the parent alternates on each photo: groupmood's batched call on up to 8 photos of
one folder, then for each of them groupmood one photo per call, then fer on the same photo. That
subprocess is started while this process holds the standard library only, so its ``ru_maxrss``
is fer's own peak over the whole run.

Targets (issue): >= 10x faster per photo than fer while finding at least as many faces; peak RSS
<= 1.5 GB. Prints markdown tables and appends a dated section to ``benchmarks/RESULTS.md``.
Unreadable photos are reported and skipped, as ``groupmood predict`` does.

fer is not a project dependency. On first use the script pip-installs it with ``--target`` into
the git-ignored ``benchmarks/.peers-fer`` (about 2 GB; needs the network once): fer 22.5.1 and
facenet-pytorch 2.6.0 with ``--no-deps`` (facenet-pytorch pins torch<2.3; the project's torch is
used), plus tensorflow-cpu, opencv-contrib-python 4.x (fer needs OpenCV 4; the project has 5),
moviepy 1.x (fer 22.5.1 imports ``moviepy.editor``) and setuptools<81 (fer uses
``pkg_resources``). Only the fer subprocess puts that folder on ``sys.path``, so groupmood is
measured with the project's own OpenCV; it imports torch and torchvision.ops before fer
(tensorflow imported first crashes the process).

    .venv/bin/python benchmarks/predict.py                        # all 228 photos, several minutes on 2 cores
    .venv/bin/python benchmarks/predict.py --limit 3 --no-write   # quick check, prints only
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, loadavg, photo_benchmark_parser, publish, run_memory_workers, section
from detect import FOLDERS, photo_paths

FER_PEERS = REPO / "benchmarks" / ".peers-fer"
FER_VERSION = "22.5.1"
# fer pulls in keras, "ffmpeg==1.4" and facenet-pytorch (which pins torch<2.3): installed without deps
FER_NO_DEPS = [f"fer=={FER_VERSION}", "facenet-pytorch==2.6.0"]
# what fer 22.5.1 imports, with what it needs; numpy resolves to the project's version
FER_DEPS = ["tensorflow-cpu==2.21.0", "opencv-contrib-python>=4.5,<5", "moviepy==1.0.3", "pandas",
            "setuptools<81", "requests", "tqdm", "pillow"]
FER_MARKER = FER_PEERS / "INSTALLED.json"
SPEEDUP_TARGET = 10.0
RSS_TARGET_MB = 1.5e9 / 2**20  # 1.5 GB in MiB (the unit of ru_maxrss / 1024)


# ---------------------------------------------------------------------------------------- setup

def ensure_fer() -> None:
    """pip-install fer and what it needs into benchmarks/.peers-fer when missing or outdated."""
    want = {"no_deps": FER_NO_DEPS, "deps": FER_DEPS}
    try:
        if json.loads(FER_MARKER.read_text()) == want:
            return
    except (OSError, ValueError):
        pass
    if FER_PEERS.exists():
        shutil.rmtree(FER_PEERS)
    print(f"installing fer {FER_VERSION} and tensorflow into {FER_PEERS} (about 2 GB, once) ...", flush=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(FER_PEERS)]
    subprocess.run([*pip, "--no-deps", *FER_NO_DEPS], check=True)
    subprocess.run([*pip, *FER_DEPS], check=True)
    FER_MARKER.write_text(json.dumps(want, indent=1) + "\n")


def cli_defaults() -> dict:
    """The default value of every option of ``groupmood predict`` (as its click command declares)."""
    from groupmood.cli.predict import predict_cmd
    return {p.name: p.default for p in predict_cmd.params}


def our_recognizer(threads: int):
    """The recognizer ``groupmood predict`` builds with its default options (default bundle)."""
    import torch

    from groupmood.cli.common import build_detector
    from groupmood.cli.predict import load_recognizer
    torch.set_num_threads(threads)
    d = cli_defaults()
    det = build_detector(d["device"], d["min_face_frac"], d["min_face_px"], d["thresholds"], d["factor"],
                         d["mtcnn_weights"])
    return load_recognizer(d["bundle"], d["device"], det, d["weights_text"], d["preset"], d["pooling"])


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def vmhwm_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------------------------------- workers

def ours_worker(kind: str, shared: Path, threads: int, limit: int | None) -> int:
    """Run groupmood over every photo in this process, as the CLI does; print peak RSS as JSON."""
    from groupmood.images import load_batches

    paths = [p for _, p in photo_paths(shared, limit)]
    rec = our_recognizer(threads)
    d = cli_defaults()
    after_load = rss_mb()
    faces = 0
    for good, _bad in load_batches(paths, d["batch_size"] if kind == "ours-batch" else 1, d["max_pixels"]):
        if good:
            faces += sum(len(r.faces) for r in rec.predict([img for _, img in good]))
    print(json.dumps({"kind": kind, "after_load_mb": after_load, "peak_mb": rss_mb(), "vmhwm_mb": vmhwm_mb(),
                      "faces": faces}))
    return 0


def fer_worker(threads: int) -> int:
    """Serve fer: one JSON request per stdin line ({"path"} or {"quit"}), one JSON answer per line.

    Each answer carries the seconds of ``detect_emotions`` alone (``cv2.imread`` is not timed);
    the last one, after {"quit"}, the peak RSS of this process.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever tensorflow, moviepy or fer print goes to stderr, not into the answers

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    clock = time.perf_counter
    t0 = clock()
    import torch
    import torchvision.ops  # noqa: F401  (before tensorflow: the other order crashes the process)
    sys.path.insert(0, str(FER_PEERS))
    import cv2
    import keras
    import tensorflow as tf

    import fer
    from fer import FER
    t_import = clock() - t0
    torch.set_num_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    t0 = clock()
    detector = FER(mtcnn=True)
    send({"ready": True, "import_s": t_import, "load_s": clock() - t0, "after_load_mb": rss_mb(),
          "versions": {"fer": fer.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                       "opencv": cv2.__version__, "torch": torch.__version__}})
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        img = cv2.imread(req["path"])  # BGR, as fer expects
        if img is None:
            send({"error": "OpenCV cannot read it"})
            continue
        t0 = clock()
        out = detector.detect_emotions(img)
        send({"seconds": clock() - t0, "faces": len(out)})
    send({"peak_mb": rss_mb(), "vmhwm_mb": vmhwm_mb()})
    return 0


class FerClient:
    """The parent's end of the fer worker subprocess."""

    def __init__(self, threads: int) -> None:
        self.log = tempfile.TemporaryFile("w+")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", "fer",
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=REPO, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            raise SystemExit(f"the fer worker died (exit {self.proc.returncode}):\n{self.log.read()[-3000:]}")
        return json.loads(line)

    def ask(self, obj: dict) -> dict:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        out = self.ask({"quit": True})
        self.proc.stdin.close()
        self.proc.wait()
        return out


def measure_memory(shared: Path, threads: int, limit: int | None) -> dict:
    return run_memory_workers(__file__, ("ours", "ours-batch"), shared, threads, limit)


# ---------------------------------------------------------------------------------------- report

def summary(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.median(xs)) if xs else (float("nan"), float("nan"))


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def num(x: float, fmt: str, suffix: str = "") -> str:
    """A number, or "-" where it is undefined (no photo or no face)."""
    return "-" if x != x else f"{x:{fmt}}{suffix}"


def yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def folder_row(label: str, rows: list[dict], batches: list[tuple[float, int]]) -> str:
    """One line of the per-set table from the per-photo records and the (seconds, photos) of each batch."""
    o_mean, o_med = summary([r["ours_s"] for r in rows])
    f_mean, f_med = summary([r["fer_s"] for r in rows])
    n = len(rows)
    b_mean = ratio(sum(t for t, _ in batches), sum(k for _, k in batches))
    b_med = statistics.median([t / k for t, k in batches]) if batches else float("nan")
    fo, ff = sum(r["ours_faces"] for r in rows), sum(r["fer_faces"] for r in rows)
    ms_o = 1000 * ratio(sum(r["ours_s"] for r in rows), fo)
    ms_b = 1000 * ratio(sum(t for t, _ in batches), fo)
    ms_f = 1000 * ratio(sum(r["fer_s"] for r in rows), ff)
    return (f"| {label} | {n} | {fo} | {ff} | {o_mean:.3f} / {o_med:.3f} | {b_mean:.3f} / {b_med:.3f} | "
            f"{f_mean:.3f} / {f_med:.3f} | {num(ms_o, '.1f')} / {num(ms_b, '.1f')} | {num(ms_f, '.1f')} | "
            f"{num(ratio(f_mean, o_mean), '.1f', 'x')} / {num(ratio(f_mean, b_mean), '.1f', 'x')} |")


# ---------------------------------------------------------------------------------------- main

def benchmark(args) -> int:
    shared = args.shared.resolve()
    load_start = loadavg()
    ensure_fer()
    # Every subprocess starts while this process holds the standard library only: on Linux a
    # child's ru_maxrss starts from the parent's RSS at fork.
    memory = None if args.no_memory else measure_memory(shared, args.threads, args.limit)
    print("starting the fer worker ...", flush=True)
    peer = FerClient(args.threads)
    versions = peer.ready["versions"]

    clock = time.perf_counter
    t0 = clock()
    import torch

    from groupmood.cli.predict import predict_cmd  # noqa: F401  (the command's imports, as the CLI pays them)
    from groupmood.images import load_batches
    from groupmood.pipeline import default_bundle_path
    our_import = clock() - t0
    t0 = clock()
    rec = our_recognizer(args.threads)
    our_load = clock() - t0
    d = cli_defaults()
    batch = d["batch_size"]

    photos = photo_paths(shared, args.limit)
    folder_of = {p: f for f, p in photos}
    print(f"{len(photos)} photos from {shared}; load average {load_start}", flush=True)
    images: list[tuple[str, Path, object]] = []
    skipped: list[tuple[str, str]] = []
    for good, bad in load_batches([p for _, p in photos], 1, d["max_pixels"]):
        for err in bad:  # reported and skipped, as groupmood predict does
            print(f"skipped {err}", flush=True)
            skipped.append((err.path, err.reason))
        images += [(folder_of[p], p, img) for p, img in good]

    rows: list[dict] = []
    batches: dict[str, list[tuple[float, int]]] = {f: [] for f, _ in FOLDERS}
    batch_diff = 0
    with torch.inference_mode():
        if images:  # warm-up, one photo each
            rec.predict([images[0][2]])
            peer.ask({"path": str(images[0][1])})
        done = 0
        for folder, _ in FOLDERS:
            mine = [x for x in images if x[0] == folder]
            for start in range(0, len(mine), batch):
                chunk = mine[start:start + batch]
                t0 = clock()
                res_batch = rec.predict([img for _, _, img in chunk])
                batches[folder].append((clock() - t0, len(chunk)))
                for (_, path, img), rb in zip(chunk, res_batch):  # alternate on each photo: ours, then fer
                    t0 = clock()
                    res = rec.predict([img])[0]
                    t_ours = clock() - t0
                    ans = peer.ask({"path": str(path)})
                    if "error" in ans:
                        print(f"skipped {path}: fer: {ans['error']}", flush=True)
                        skipped.append((str(path), f"fer: {ans['error']}"))
                        continue
                    batch_diff += len(rb.faces) != len(res.faces)
                    rows.append({"folder": folder, "name": f"{folder}/{path.name}", "ours_s": t_ours,
                                 "ours_faces": len(res.faces), "fer_s": ans["seconds"], "fer_faces": ans["faces"]})
                done += len(chunk)
                print(f"  {done}/{len(images)} photos  groupmood {sum(r['ours_s'] for r in rows):.1f}s  "
                      f"batched {sum(t for b in batches.values() for t, _ in b):.1f}s  "
                      f"fer {sum(r['fer_s'] for r in rows):.1f}s", flush=True)
    fer_mem = peer.close()

    # ---- per photo set
    head = [f"| Photos | n | Faces (groupmood) | Faces (fer) | groupmood s/photo, one per call (mean / median) | "
            f"groupmood s/photo, batches of {batch} (mean / median) | fer s/photo (mean / median) | "
            f"groupmood ms/face (one per call / batched) | fer ms/face | Speed-up fer / groupmood "
            f"(one per call / batched) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    folders = [f for f, _ in FOLDERS if any(r["folder"] == f for r in rows)]
    sets = head + [folder_row(f, [r for r in rows if r["folder"] == f], batches[f]) for f in folders]
    sets.append(folder_row("**all**", rows, [b for f in folders for b in batches[f]]))

    # ---- targets
    o_mean, o_med = summary([r["ours_s"] for r in rows])
    f_mean, f_med = summary([r["fer_s"] for r in rows])
    all_batches = [b for f in folders for b in batches[f]]
    b_mean = ratio(sum(t for t, _ in all_batches), sum(k for _, k in all_batches))
    fo, ff = sum(r["ours_faces"] for r in rows), sum(r["fer_faces"] for r in rows)
    sp_one, sp_batch = ratio(f_mean, o_mean), ratio(f_mean, b_mean)
    fer_label = f"fer {versions['fer']} `FER(mtcnn=True)`"
    targets = [f"| Measure | groupmood predict (default bundle) | {fer_label} | Target | Met |",
               "|---|---|---|---|---|",
               f"| s/photo, one photo per call (mean / median) | {o_mean:.3f} / {o_med:.3f} | "
               f"{f_mean:.3f} / {f_med:.3f} | | |",
               f"| Speed-up fer / groupmood, one photo per call (mean) | {sp_one:.1f}x | 1x | >= {SPEEDUP_TARGET:g}x | "
               f"{yes(sp_one >= SPEEDUP_TARGET)} |",
               f"| Speed-up fer / groupmood, batches of {batch} (`groupmood predict`'s default; mean) | "
               f"{sp_batch:.1f}x | 1x | >= {SPEEDUP_TARGET:g}x | {yes(sp_batch >= SPEEDUP_TARGET)} |",
               f"| Faces found | {fo} | {ff} | >= fer's | {yes(fo >= ff)} |",
               f"| ms per face found, one photo per call | "
               f"{num(1000 * ratio(sum(r['ours_s'] for r in rows), fo), '.1f')} | "
               f"{num(1000 * ratio(sum(r['fer_s'] for r in rows), ff), '.1f')} | | |"]
    fer_rss = f"{fer_mem['peak_mb']:.0f} ({peer.ready['after_load_mb']:.0f})"
    if memory:
        peak = max(memory["ours"]["peak_mb"], memory["ours-batch"]["peak_mb"])
        targets += [
            f"| Peak RSS, one photo per call, MiB (after model load) | {memory['ours']['peak_mb']:.0f} "
            f"({memory['ours']['after_load_mb']:.0f}) | {fer_rss} | <= 1.5 GB ({RSS_TARGET_MB:.0f} MiB) | "
            f"{yes(memory['ours']['peak_mb'] <= RSS_TARGET_MB)} |",
            f"| Peak RSS, batches of {batch}, MiB | {memory['ours-batch']['peak_mb']:.0f} "
            f"({memory['ours-batch']['after_load_mb']:.0f}) | | <= 1.5 GB | {yes(peak <= RSS_TARGET_MB)} |"]
    else:
        targets.append(f"| Peak RSS, MiB (after model load) | not measured (`--no-memory`) | {fer_rss} | "
                       f"<= 1.5 GB | |")
    targets += [f"| Load before timing, s: imports / models | {our_import:.1f} / {our_load:.1f} | "
                f"{peer.ready['import_s']:.1f} / {peer.ready['load_s']:.1f} | | |",
                f"| groupmood batched vs one per call | {batch_diff} photos with a different face count | | | |"]

    more = [r for r in rows if r["fer_faces"] > r["ours_faces"]]
    print()
    print("\n".join(targets))
    print()
    print("\n".join(sets))
    print()
    print(f"photos where fer finds more faces than groupmood: {len(more)}")
    for r in more:
        print(f"  {r['name']}: groupmood {r['ours_faces']}, fer {r['fer_faces']}")
    if memory:
        print("peak RSS check (ru_maxrss vs /proc VmHWM, MiB): " + ", ".join(
            f"{k} {v['peak_mb']:.0f} vs {v['vmhwm_mb']:.0f}" for k, v in memory.items())
            + f", fer {fer_mem['peak_mb']:.0f} vs {fer_mem['vmhwm_mb']:.0f}")

    bundle = Path(d["bundle"] or default_bundle_path()).resolve()
    bundle = bundle.relative_to(REPO) if bundle.is_relative_to(REPO) else bundle
    counts = ", ".join(f"{f} {sum(r['folder'] == f for r in rows)}" for f in folders)
    det = (f"thresholds {'/'.join(f'{t:g}' for t in d['thresholds'])}, factor {d['factor']}, minimum face "
           f"{d['min_face_frac']:g} of the shorter side")
    notes = [
        f"{len(rows)} photos of `../shared/data` ({counts}); CPU, torch threads {args.threads} in both processes, "
        f"tensorflow intra/inter-op threads {args.threads}.",
        f"groupmood: `groupmood predict`'s default options through its own `build_detector` / `load_recognizer` "
        f"(bundle `{bundle}`, "
        f"branches {', '.join(rec.branches)}; MTCNN {det}), `GroupEmotionRecognizer.predict` on RGB arrays from "
        f"`groupmood.images.load_image`.",
        f"fer: {fer_label} with its defaults (facenet-pytorch MTCNN: thresholds 0.6/0.7/0.7, factor 0.709, minimum "
        f"face 20 px; mini-Xception 64x64 grey), `detect_emotions` on the BGR array of `cv2.imread` as its README "
        f"shows (fer hands that BGR array to MTCNN as it is); tensorflow {versions['tensorflow']}, keras "
        f"{versions['keras']}, OpenCV {versions['opencv']} in `benchmarks/.peers-fer`, run in its own subprocess.",
        "Timing: models loaded once first (load times in the table); decoding not timed; one warm-up photo each; "
        f"groupmood's batched call on up to {batch} photos of one set precedes their per-photo calls, then each "
        "photo alternates groupmood one per call, fer. Peak RSS: each alone in a subprocess over all photos, "
        "photos loaded one batch at a time (`ru_maxrss`; after model load in parentheses).",
    ]
    if skipped:
        notes.append(f"Skipped (unreadable): {len(skipped)}: " + "; ".join(f"{p} ({why})" for p, why in skipped) + ".")
    if more:
        notes.append(f"Photos where fer finds more faces than groupmood: {len(more)} ("
                     + ", ".join(f"{r['name']} {r['ours_faces']} vs {r['fer_faces']}" for r in more) + ").")
    text = section("groupmood predict vs fer", args.threads, load_start, notes,
                   targets + ["", "Per photo set:", ""] + sets)
    publish(text, not args.no_write)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = photo_benchmark_parser(__doc__, "torch (and tensorflow) threads (default 2)",
                                "skip groupmood's peak-RSS subprocesses")
    ap.add_argument("--worker", choices=("ours", "ours-batch", "fer"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "fer":
        return fer_worker(args.threads)
    if args.worker:
        return ours_worker(args.worker, args.shared, args.threads, args.limit)
    return benchmark(args)


if __name__ == "__main__":
    raise SystemExit(main())
